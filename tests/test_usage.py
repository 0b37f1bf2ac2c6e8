"""Token usage, token budgets and live output, as a user meets them through `GoalManager`.

Providers here are plugins written the way a plugin author would: they report usage by
returning `goalkit.Answer` (or raising `ProviderError(usage=...)`), and stream through the
optional ``stream_step``. The real OpenAI and Anthropic providers have their own cases in
``test_providers_openai.py`` and ``test_providers_anthropic.py``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from asgi_helpers import Users, app_for, client, drive, parse_sse

import goalkit
from goalkit import Answer, GoalConflict, GoalManager, InvalidGoal, ProviderError, Usage
from goalkit.models import Event, Goal, Step
from goalkit.providers import Emit
from goalkit.testing import EventRecorder, QueueProvider

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage URL of each built-in backend."""
    if request.param == "memory":
        return "memory://"
    return f"sqlite:///{tmp_path / 'g.db'}"


def manager_for(url: str, *plugins: object, **options: Any) -> GoalManager:
    options.setdefault("retry_backoff", 0)
    return GoalManager(url, plugins=plugins, entry_points=False, **options)


async def run(url: str, provider: QueueProvider, **create: Any) -> tuple[Goal, list[Event]]:
    async with manager_for(url, provider) as manager:
        goal = await manager.create(create.pop("description", "a\nb"), model="fake", **create)
        goal = await manager.wait(goal.id, timeout=10)
        events = [e async for e in manager.events(goal.id)]
    return goal, events


def tokens(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return Usage(input_tokens, output_tokens).to_dict()


class TestUsage:
    """Every provider call's usage lands on its step, adds up on the goal and is in events."""

    async def test_recorded_on_steps_goal_and_events(self, url: str) -> None:
        """Planning counts on the goal, each attempt on its step, a failed one included."""
        provider = QueueProvider()
        provider.enqueue_plan(Answer(["a", "b"], Usage(5, 1)))
        provider.enqueue(
            Answer("ra", Usage(10, 2)),
            ProviderError("malformed answer", usage=Usage(4, 4)),
            Answer("rb", Usage(7, 3)),
        )
        goal, events = await run(url, provider)

        assert goal.status == "completed", goal.error
        assert [s.usage for s in goal.steps] == [Usage(10, 2), Usage(11, 7)]
        assert goal.usage == Usage(26, 10)
        assert goal.to_dict()["usage"] == {
            "input_tokens": 26,
            "output_tokens": 10,
            "total_tokens": 36,
        }
        assert goal.to_dict()["steps"][1]["usage"] == tokens(11, 7)
        assert goal.max_tokens is None and goal.to_dict()["max_tokens"] is None
        usage = [(e.type, e.data.get("usage")) for e in events if "usage" in e.data]
        assert usage == [
            ("goal.decomposed", tokens(5, 1)),
            ("goal.step_completed", tokens(10, 2)),
            ("goal.step_failed", tokens(4, 4)),
            ("goal.step_completed", tokens(7, 3)),
        ]

    async def test_plain_returns_count_as_no_tokens(self, url: str) -> None:
        """A provider that returns bare values still works; it simply reports nothing."""
        goal, events = await run(url, QueueProvider())
        assert goal.status == "completed"
        assert goal.usage == Usage() and all(s.usage == Usage() for s in goal.steps)
        completed = [e for e in events if e.type == "goal.step_completed"]
        assert all(e.data["usage"] == tokens(0, 0) for e in completed)

    async def test_failed_planning_attempts_count_on_the_goal(self, url: str) -> None:
        provider = QueueProvider()
        provider.enqueue_plan(
            ProviderError("malformed plan", usage=Usage(2, 2)), Answer(["a"], Usage(1, 1))
        )
        provider.enqueue(Answer("r", Usage(1, 0)))
        goal, events = await run(url, provider)
        assert goal.status == "completed", goal.error
        assert goal.usage == Usage(4, 3)
        assert events[1].data["usage"] == tokens(3, 3)

    async def test_invalid_usage_fails_the_attempt_clearly(self) -> None:
        """A provider cannot report negative tokens: its attempt fails saying why."""
        provider = QueueProvider()
        provider.enqueue(lambda goal, step, previous: Answer("r", Usage(-1, 0)))
        goal, _ = await run("memory://", provider, description="a", max_retries=0)
        assert goal.status == "failed"
        assert goal.steps[0].error is not None
        assert "input_tokens must be an integer of at least 0" in goal.steps[0].error.message
        assert goal.usage == Usage()


class TestBudgets:
    """max_tokens: no call once it is used up; a call past it fails the goal."""

    async def test_no_call_is_made_once_the_budget_is_used_up(self, url: str) -> None:
        provider = QueueProvider()
        provider.enqueue_plan(Answer(["a", "b"], Usage(5, 5)))
        provider.enqueue(Answer("ra", Usage(5, 5)))
        goal, events = await run(url, provider, max_tokens=20)

        assert goal.status == "failed"
        assert goal.error is not None and goal.error.code == "budget_exceeded"
        assert "20 of max_tokens=20 used" in goal.error.message
        assert "before step 2" in goal.error.message
        assert provider.count(goal.id, 2) == 0
        assert [s.status for s in goal.steps] == ["completed", "pending"]
        assert goal.usage.total_tokens == 20 and goal.tokens_left == 0
        assert [e.type for e in events][-2:] == ["goal.step_completed", "goal.failed"]

    async def test_a_call_that_passes_the_budget_fails_the_goal(self, url: str) -> None:
        """Its tokens are recorded, its result is not used, and nothing is retried."""
        provider = QueueProvider()
        provider.enqueue_plan(Answer(["a", "b"], Usage(5, 5)))
        provider.enqueue(Answer("ra", Usage(5, 1)))
        goal, events = await run(url, provider, max_tokens=15, max_retries=3)

        assert goal.status == "failed"
        assert goal.error is not None and goal.error.code == "budget_exceeded"
        first = goal.steps[0]
        assert (first.status, first.result, first.attempts) == ("failed", None, 1)
        assert first.error is not None and first.error.code == "budget_exceeded"
        assert first.usage == Usage(5, 1)
        assert goal.usage.total_tokens == 16
        failed = next(e for e in events if e.type == "goal.step_failed")
        assert failed.data["will_retry"] is False
        assert failed.data["usage"] == tokens(5, 1)

    async def test_planning_counts_against_the_budget(self, url: str) -> None:
        provider = QueueProvider()
        provider.enqueue_plan(Answer(["a"], Usage(4, 4)))
        goal, _ = await run(url, provider, max_tokens=5)
        assert goal.status == "failed"
        assert goal.error is not None and goal.error.code == "budget_exceeded"
        assert "planning attempt 1 used 8 tokens" in goal.error.message
        assert goal.usage == Usage(4, 4)
        assert provider.calls == [("plan", goal.id, 0)]

    async def test_a_failed_call_that_passes_the_budget_ends_it(self) -> None:
        """Tokens a failed call reports count too: past the budget, no retry follows."""
        provider = QueueProvider()
        provider.enqueue_plan(ProviderError("malformed plan", usage=Usage(6, 6)))
        goal, _ = await run("memory://", provider, max_tokens=10, max_retries=3)
        assert goal.error is not None and goal.error.code == "budget_exceeded"
        assert provider.calls == [("plan", goal.id, 0)]
        assert goal.usage == Usage(6, 6)

    async def test_provider_is_told_what_is_left(self) -> None:
        """`goal.tokens_left` is the cap a provider gives the model for the call's output."""
        seen: list[int | None] = []

        def answer(goal: Goal, step: Step, previous: Sequence[Step]) -> Answer:
            seen.append(goal.tokens_left)
            return Answer(f"r{step.index}", Usage(10, 5))

        provider = QueueProvider()
        provider.enqueue_plan(Answer(["a", "b"], Usage(10, 0)))
        provider.enqueue(answer, answer)
        goal, _ = await run("memory://", provider, max_tokens=100)
        assert goal.status == "completed", goal.error
        assert seen == [90, 75]
        assert goal.tokens_left == 60

    @pytest.mark.parametrize("bad", [0, -1, True, "100", 1.5, 2**53])
    async def test_bad_budget_is_invalid(self, bad: object) -> None:
        async with manager_for("memory://", QueueProvider()) as manager:
            with pytest.raises(InvalidGoal) as caught:
                await manager.create("x", model="fake", max_tokens=bad)  # type: ignore[arg-type]
        assert caught.value.field == "max_tokens"

    async def test_budget_is_in_goal_created_and_in_idempotency(self) -> None:
        """The budget is part of the request an Idempotency-Key stands for."""
        async with manager_for("memory://", QueueProvider(delay=5)) as manager:
            goal = await manager.create("x", model="fake", max_tokens=10, idempotency_key="k")
            again = await manager.create("x", model="fake", max_tokens=10, idempotency_key="k")
            assert again.id == goal.id and again.max_tokens == 10
            with pytest.raises(GoalConflict):
                await manager.create("x", model="fake", max_tokens=11, idempotency_key="k")
            await manager.cancel(goal.id)
            created, *_ = [e async for e in manager.events(goal.id)]
        assert created.type == "goal.created" and created.data["max_tokens"] == 10

    async def test_scripted_budget_fails_offline(self) -> None:
        """The scripted provider counts words as tokens, so a tiny budget fails planning."""
        async with manager_for("memory://") as manager:
            goal = await manager.create("Research tides", max_tokens=10)
            goal = await manager.wait(goal.id, timeout=10)
        assert goal.error is not None and goal.error.code == "budget_exceeded"
        assert goal.usage.input_tokens == 2  # "Research tides"


class Streamer:
    """Model ``stream``: one step whose text streams in two pieces once `gate` opens."""

    def __init__(self) -> None:
        self.gate = anyio.Event()
        self.calls: list[str] = []

    @goalkit.hookimpl
    def goalkit_model_provider(self, model: str) -> Streamer | None:
        return self if model == "stream" else None

    async def plan(self, goal: Goal, max_steps: int) -> Answer:
        return Answer(["only"], Usage(3, 1))

    async def run_step(self, goal: Goal, step: Step, previous: Sequence[Step]) -> Answer:
        self.calls.append("run_step")
        await self.gate.wait()
        return Answer("Hello", Usage(2, 2))

    async def stream_step(
        self, goal: Goal, step: Step, previous: Sequence[Step], emit: Emit
    ) -> Answer:
        self.calls.append("stream_step")
        await self.gate.wait()
        emit("Hel")
        emit("")  # nothing to say: no event
        await anyio.lowlevel.checkpoint()
        emit("lo")
        return Answer("Hello", Usage(2, 2))


async def follow(manager: GoalManager, goal_id: str, open_gate: anyio.Event) -> list[Event]:
    """Every event of a live follower, opening the gate once the step has started."""
    seen = []
    async for event in manager.events(goal_id):
        seen.append(event)
        if event.type == "goal.step_started":
            open_gate.set()
    return seen


class TestLiveOutput:
    """live_output: streamed text as live-only goal.step_delta events."""

    async def test_followers_get_deltas_that_are_never_stored(self, url: str) -> None:
        provider, recorder = Streamer(), EventRecorder()
        async with manager_for(url, provider, recorder, live_output=True) as manager:
            goal = await manager.create("x", model="stream")
            live = await follow(manager, goal.id, provider.gate)
            replayed = [e async for e in manager.events(goal.id)]
            goal = await manager.get(goal.id)

        assert goal.status == "completed" and goal.result == "Hello"
        assert provider.calls == ["stream_step"]
        deltas = [e for e in live if e.type == "goal.step_delta"]
        assert [e.data["text"] for e in deltas] == ["Hel", "lo"]
        started = next(e for e in live if e.type == "goal.step_started")
        assert all(e.id == 0 and not e.durable for e in deltas)
        assert [e.data["after"] for e in deltas] == [started.id, started.id]
        assert [e.data["seq"] for e in deltas] == [1, 2]
        assert {(e.data["step"], e.data["attempt"]) for e in deltas} == {(1, 1)}
        # Between the step's start and its completion, and nowhere durable.
        types = [e.type for e in live]
        assert types[types.index("goal.step_started") + 1 : types.index("goal.step_completed")] == [
            "goal.step_delta",
            "goal.step_delta",
        ]
        assert [e for e in live if e.durable] == replayed
        assert "goal.step_delta" not in [e.type for e in replayed]
        assert "goal.step_delta" not in recorder.types(goal.id)
        assert goal.usage == Usage(5, 3)

    async def test_off_by_default(self) -> None:
        provider = Streamer()
        provider.gate.set()
        async with manager_for("memory://", provider) as manager:
            goal = await manager.create("x", model="stream")
            live = [e async for e in manager.events(goal.id)]
        assert provider.calls == ["run_step"]
        assert "goal.step_delta" not in [e.type for e in live]

    async def test_scripted_streams_its_result(self) -> None:
        async with manager_for("memory://", live_output=True) as manager:
            goal = await manager.create("One thing. Another thing", model="scripted/0.05")
            live = [e async for e in manager.events(goal.id)]
            goal = await manager.get(goal.id)
        for step in goal.steps:
            texts = [
                e.data["text"]
                for e in live
                if e.type == "goal.step_delta" and e.data["step"] == step.index
            ]
            assert "".join(texts) == step.result

    async def test_sse_sends_deltas_without_an_id(self) -> None:
        """A reconnecting client's Last-Event-ID is always a stored event's number."""
        provider = Streamer()
        manager = manager_for("memory://", Users(), provider, live_output=True)
        app = app_for(manager)
        async with manager:
            goal = await manager.create("x", model="stream", owner="alice")
            async with anyio.create_task_group() as tasks:

                async def stream() -> None:
                    sent, _ = await drive(
                        app,
                        "GET",
                        f"/api/v1/goals/{goal.id}/events",
                        headers=[(b"authorization", b"Bearer alice-token")],
                    )
                    body = b"".join(m.get("body", b"") for m in sent if "body" in m)
                    messages.extend(parse_sse(body.decode()))

                messages: list[dict[str, Any]] = []
                tasks.start_soon(stream)
                await wait_for_subscriber(manager, goal.id)
                provider.gate.set()
        events = [m for m in messages if "event" in m]
        deltas = [m for m in events if m["event"] == ["goal.step_delta"]]
        assert [json.loads(m["data"][0])["data"]["text"] for m in deltas] == ["Hel", "lo"]
        assert all("id" not in m for m in deltas)
        stored = [m for m in events if m["event"] != ["goal.step_delta"]]
        assert [int(m["id"][0]) for m in stored] == list(range(1, len(stored) + 1))

    async def test_http_body_takes_a_budget(self) -> None:
        """max_tokens in the POST body: an integer of at least 1, or null for none."""
        async with manager_for("memory://", Users(), QueueProvider()) as manager:
            auth = {"authorization": "Bearer alice-token"}
            async with client(app_for(manager)) as http:
                made = await http.post(
                    "/api/v1/goals", json={"description": "x", "max_tokens": 50}, headers=auth
                )
                assert made.status_code == 201
                data = made.json()["data"]
                assert data["max_tokens"] == 50 and data["usage"] == tokens(0, 0)
                none = await http.post(
                    "/api/v1/goals", json={"description": "x", "max_tokens": None}, headers=auth
                )
                assert none.status_code == 201 and none.json()["data"]["max_tokens"] is None
                for bad in (0, -5, "50", True, 1.5, 2**53):
                    refused = await http.post(
                        "/api/v1/goals", json={"description": "x", "max_tokens": bad}, headers=auth
                    )
                    assert refused.status_code == 400, bad
                    assert refused.json()["error"]["field"] == "max_tokens"
                spec = (await http.get("/api/v1/openapi.json")).json()["components"]["schemas"]
        assert spec["GoalCreate"]["properties"]["max_tokens"]["minimum"] == 1
        assert "usage" in spec["Goal"]["required"] and "usage" in spec["Step"]["required"]
        assert "max_tokens" in spec["Goal"]["required"]


async def wait_for_subscriber(manager: GoalManager, goal_id: str) -> None:
    """Until a live follower of the goal is subscribed (the SSE stream is open)."""
    with anyio.fail_after(5):
        while not manager._bus._inboxes.get(goal_id):  # noqa: ASYNC110
            await anyio.sleep(0.01)


class Closable(QueueProvider):
    """A provider holding a resource that the manager must release when it closes."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1


class TestProviderClose:
    """A provider's optional ``aclose`` runs once when its manager closes."""

    async def test_aclose_awaited_once_per_provider(self) -> None:
        used, unused = Closable("used"), Closable("unused")
        manager = manager_for("memory://", used, unused)
        async with manager:
            goal = await manager.create("x", model="used")
            await manager.create("y", model="used")
            await manager.wait(goal.id, timeout=5)
            assert used.closed == 0
        assert (used.closed, unused.closed) == (1, 0)
        async with manager:  # asked again on the next start, and closed again
            await manager.wait((await manager.create("z", model="used")).id, timeout=5)
        assert used.closed == 2

    async def test_a_failing_aclose_is_logged_not_raised(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        provider = Closable("broken")

        async def broken() -> None:
            raise OSError("socket already gone")

        provider.aclose = broken  # type: ignore[method-assign]
        async with manager_for("memory://", provider) as manager:
            await manager.wait((await manager.create("x", model="broken")).id, timeout=5)
        assert "closing the model provider" in caplog.text
        assert "socket already gone" in caplog.text

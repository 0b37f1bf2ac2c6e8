"""A goal's life through `GoalManager`, as a user meets it, on both backends and event loops.

Every test here runs four times: on asyncio and trio, against ``memory://`` and a real SQLite
file, so the engine's behaviour is checked through the manager on both stores.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

import goalkit
from goalkit import GoalConflict, GoalManager, GoalNotFound, InvalidGoal, StepSpec
from goalkit.models import Event, Goal, Step, encode_cursor
from goalkit.testing import EventRecorder, QueueProvider

pytestmark = pytest.mark.anyio

GOAL_FIELDS = {
    "id",
    "description",
    "model",
    "mode",
    "max_steps",
    "max_retries",
    "tags",
    "owner",
    "status",
    "phase",
    "workflow_id",
    "steps_completed",
    "total_steps",
    "current_step",
    "result",
    "error",
    "created_at",
    "updated_at",
    "completed_at",
    "max_tokens",
    "usage",
}
STEP_FIELDS = {
    "index",
    "title",
    "description",
    "status",
    "attempts",
    "result",
    "error",
    "started_at",
    "completed_at",
    "usage",
}
EVENT_FIELDS = {"id", "type", "goal_id", "workflow_id", "ts", "data"}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The lifecycle holds on both event loops anyio supports."""
    return str(request.param)


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage URL of each built-in backend."""
    if request.param == "memory":
        return "memory://"
    return f"sqlite:///{tmp_path / 'g.db'}"


class GatedProvider:
    """A provider plugin whose steps run until the test opens their goal's gate."""

    def __init__(self, model: str = "gated") -> None:
        self.model = model
        self.started: defaultdict[str, anyio.Event] = defaultdict(anyio.Event)
        self.gates: defaultdict[str, anyio.Event] = defaultdict(anyio.Event)
        self.order: list[str] = []
        self.active = 0
        self.peak = 0

    @goalkit.hookimpl
    def goalkit_model_provider(self, model: str) -> GatedProvider | None:
        return self if model == self.model else None

    async def plan(self, goal: Goal, max_steps: int) -> list[str]:
        return ["the only step"]

    async def run_step(self, goal: Goal, step: Step, previous: Sequence[Step]) -> str:
        self.order.append(goal.id)
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.started[goal.id].set()
        try:
            await self.gates[goal.id].wait()
        finally:
            self.active -= 1
        return f"{goal.id} done"


def manager_for(url: str, *plugins: object, **options: object) -> GoalManager:
    options.setdefault("retry_backoff", 0)
    return GoalManager(url, plugins=plugins, entry_points=False, **options)  # type: ignore[arg-type]


async def replay(manager: GoalManager, goal_id: str) -> list[Event]:
    return [event async for event in manager.events(goal_id)]


class TestCompletedGoal:
    """A goal in plan mode runs its steps in order and ends completed with the last result."""

    async def test_create_returns_the_stored_goal_before_it_runs(self, url: str) -> None:
        """`create` answers with the new goal: active, phase created, nothing decomposed yet."""
        provider = QueueProvider()
        async with manager_for(url, provider) as manager:
            goal = await manager.create(
                "Write unit tests", model="fake", tags=["qa", "core"], owner="alice"
            )
            assert goal.id.startswith("goal-")
            assert goal.workflow_id.startswith("wf-")
            assert (goal.status, goal.phase) == ("active", "created")
            assert (goal.total_steps, goal.steps_completed, goal.current_step) == (0, 0, None)
            assert (goal.result, goal.error, goal.completed_at) == (None, None, None)
            assert (goal.mode, goal.max_steps, goal.max_retries) == ("plan", 10, 2)
            assert goal.tags == ("qa", "core")
            assert goal.owner == "alice"
            assert goal.last_event_id == 1
            assert goal.created_at == goal.updated_at
            await manager.wait(goal.id)

    async def test_steps_run_in_order_and_the_result_is_the_last_steps(self, url: str) -> None:
        """Each step gets the completed steps before it; the goal's result is the last one's."""
        provider = QueueProvider()
        provider.enqueue_plan([StepSpec("Search", "find papers"), "Summarise", "Review"])
        provider.enqueue(
            {"papers": 3},
            lambda goal, step, previous: [p.result for p in previous],
            lambda goal, step, previous: [[p.index, p.status] for p in previous],
        )
        async with manager_for(url, provider) as manager:
            created = await manager.create("Research X", model="fake")
            goal = await manager.wait(created.id)

        assert (goal.status, goal.phase) == ("completed", "completed")
        assert (goal.total_steps, goal.steps_completed, goal.current_step) == (3, 3, None)
        assert goal.error is None
        assert [s.index for s in goal.steps] == [1, 2, 3]
        assert [s.title for s in goal.steps] == ["Search", "Summarise", "Review"]
        assert [s.description for s in goal.steps] == ["find papers", None, None]
        assert [s.status for s in goal.steps] == ["completed"] * 3
        assert [s.attempts for s in goal.steps] == [1, 1, 1]
        assert [s.result for s in goal.steps] == [
            {"papers": 3},
            [{"papers": 3}],
            [[1, "completed"], [2, "completed"]],
        ]
        assert goal.result == [[1, "completed"], [2, "completed"]]
        assert provider.calls == [
            ("plan", goal.id, 0),
            ("run_step", goal.id, 1),
            ("run_step", goal.id, 2),
            ("run_step", goal.id, 3),
        ]

    async def test_timestamps_are_whole_seconds_in_order(self, url: str) -> None:
        """created_at ≤ started_at ≤ completed_at, all integers; completed_at is set at the end."""
        provider = QueueProvider()
        async with manager_for(url, provider) as manager:
            created = await manager.create("one\ntwo", model="fake")
            goal = await manager.wait(created.id)
        stamps = [goal.created_at, goal.updated_at, goal.completed_at]
        for step in goal.steps:
            stamps += [step.started_at, step.completed_at]
            assert step.error is None
        assert all(type(t) is int for t in stamps)
        assert goal.created_at <= goal.steps[0].started_at <= goal.steps[0].completed_at  # type: ignore[operator]
        assert goal.steps[-1].completed_at <= goal.completed_at <= goal.updated_at  # type: ignore[operator]

    async def test_a_running_goal_shows_its_current_step(self, url: str) -> None:
        """While step 1 of 1 runs the goal is active, phase running, current_step 1."""
        provider = GatedProvider()
        async with manager_for(url, provider) as manager:
            created = await manager.create("gate me", model="gated")
            await provider.started[created.id].wait()
            goal = await manager.get(created.id)
            assert (goal.status, goal.phase) == ("active", "running")
            assert (goal.total_steps, goal.steps_completed, goal.current_step) == (1, 0, 1)
            assert goal.completed_at is None
            assert [(s.status, s.attempts) for s in goal.steps] == [("running", 1)]
            provider.gates[created.id].set()
            goal = await manager.wait(created.id)
            assert (goal.status, goal.current_step, goal.result) == (
                "completed",
                None,
                f"{goal.id} done",
            )


class TestDirectMode:
    """A direct goal is one step, the description itself, with no plan call."""

    async def test_direct_mode_runs_the_description_as_one_step(self, url: str) -> None:
        """The single step's title is the description (cut to 200) and its description is whole."""
        provider = QueueProvider()
        provider.enqueue("answer")
        text = "Summarise this. " * 20
        async with manager_for(url, provider) as manager:
            created = await manager.create(text, model="fake", mode="direct")
            goal = await manager.wait(created.id)
        assert goal.mode == "direct"
        assert (goal.status, goal.total_steps, goal.steps_completed) == ("completed", 1, 1)
        [step] = goal.steps
        assert step.title == text.strip()[:200]
        assert step.description == text.strip()
        assert goal.result == "answer"
        assert provider.calls == [("run_step", goal.id, 1)]


class TestEventLog:
    """Each goal's events are stored in order and numbered 1..n without gaps."""

    async def test_a_completed_goal_has_the_seed_event_sequence(self, url: str) -> None:
        """created, decomposed, then started/completed per step, then completed: 2N + 3 events."""
        provider = QueueProvider()
        provider.enqueue_plan(["a", "b"])
        provider.enqueue("ra", "rb")
        recorder = EventRecorder()
        async with manager_for(url, provider, recorder) as manager:
            created = await manager.create("two steps", model="fake")
            goal = await manager.wait(created.id)
            events = await replay(manager, goal.id)
        assert [e.type for e in events] == [
            "goal.created",
            "goal.decomposed",
            "goal.step_started",
            "goal.step_completed",
            "goal.step_started",
            "goal.step_completed",
            "goal.completed",
        ]
        assert [e.id for e in events] == list(range(1, 8))
        assert goal.last_event_id == 7
        assert {(e.goal_id, e.workflow_id) for e in events} == {(goal.id, goal.workflow_id)}
        assert [e.terminal for e in events] == [False] * 6 + [True]
        no_usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        assert events[1].data == {
            "total_steps": 2,
            "steps": [{"index": 1, "title": "a"}, {"index": 2, "title": "b"}],
            "usage": no_usage,
        }
        assert events[2].data == {"step": 1, "title": "a", "attempt": 1}
        assert events[3].data == {
            "step": 1,
            "title": "a",
            "attempt": 1,
            "result": "ra",
            "usage": no_usage,
        }
        assert events[-1].data == {"result": "rb", "steps_completed": 2}
        # The sink saw the very same events (sinks are drained when the manager exits).
        assert recorder.of(goal.id) == events

    async def test_created_event_carries_the_creation_fields(self, url: str) -> None:
        """goal.created records what the goal was created with."""
        async with manager_for(url, QueueProvider()) as manager:
            goal = await manager.create(
                "x", model="fake", mode="direct", max_steps=3, max_retries=1, tags=["t"], owner="o"
            )
            await manager.wait(goal.id)
            first = (await replay(manager, goal.id))[0]
        assert first.type == "goal.created"
        assert first.data == {
            "description": "x",
            "model": "fake",
            "mode": "direct",
            "max_steps": 3,
            "max_retries": 1,
            "tags": ["t"],
            "owner": "o",
            "max_tokens": None,
        }


class TestJsonForms:
    """Goals, steps and events turn into the JSON form of SPEC §4."""

    async def test_full_and_list_forms(self, url: str) -> None:
        """The full form has exactly the SPEC fields plus steps; the listing leaves steps out."""
        async with manager_for(url, QueueProvider()) as manager:
            created = await manager.create("one\ntwo", model="fake", tags=["a"])
            goal = await manager.wait(created.id)
            page = await manager.list()
            events = await replay(manager, goal.id)

        full = goal.to_dict()
        assert set(full) == GOAL_FIELDS | {"steps"}
        assert json.loads(json.dumps(full)) == full
        assert full["tags"] == ["a"]
        assert [set(s) for s in full["steps"]] == [STEP_FIELDS, STEP_FIELDS]
        assert full["steps"][0]["index"] == 1

        [listed] = page.items
        assert listed.steps == ()
        brief = listed.to_dict(full=False)
        assert set(brief) == GOAL_FIELDS
        assert json.loads(json.dumps(brief)) == brief
        assert brief == {k: v for k, v in full.items() if k != "steps"}

        for event in events:
            data = event.to_dict()
            assert set(data) == EVENT_FIELDS
            assert json.loads(json.dumps(data)) == data


class TestListing:
    """`list` filters by owner, status and tag, newest first, with paging and a total."""

    async def test_filters_paging_and_order(self, url: str) -> None:
        """Each filter narrows the page; total counts every match; newest comes first."""
        provider = QueueProvider()
        gated = GatedProvider()
        async with manager_for(url, provider, gated, max_retries=0) as manager:
            done_a = await manager.wait(
                (await manager.create("a1", model="fake", owner="alice", tags=["x"])).id
            )
            provider.enqueue(RuntimeError("boom"))
            failed_b = await manager.wait(
                (await manager.create("b1", model="fake", owner="bob", tags=["x", "y"])).id
            )
            running = await manager.create("a2", model="gated", owner="alice", tags=["y"])
            await gated.started[running.id].wait()
            cancelled_a = await manager.cancel(running.id)
            ids = [done_a.id, failed_b.id, cancelled_a.id]

            everything = await manager.list()
            assert [g.id for g in everything.items] == ids[::-1]
            assert (everything.total, everything.limit, everything.offset) == (3, 50, 0)

            assert [g.id for g in (await manager.list(owner="alice")).items] == [
                cancelled_a.id,
                done_a.id,
            ]
            assert [g.id for g in (await manager.list(status="failed")).items] == [failed_b.id]
            assert [g.id for g in (await manager.list(status="completed")).items] == [done_a.id]
            assert [g.id for g in (await manager.list(status="cancelled")).items] == [
                cancelled_a.id
            ]
            assert (await manager.list(status="active")).total == 0
            assert [g.id for g in (await manager.list(tag="y")).items] == [
                cancelled_a.id,
                failed_b.id,
            ]
            assert [g.id for g in (await manager.list(owner="alice", tag="x")).items] == [done_a.id]
            assert (await manager.list(owner="carol")).total == 0

            page = await manager.list(limit=1, offset=1)
            assert [g.id for g in page.items] == [failed_b.id]
            assert (page.total, page.limit, page.offset) == (3, 1, 1)
            past = await manager.list(offset=10)
            assert (past.items, past.total) == ((), 3)

            first = await manager.list(owner="alice", limit=1)
            rest = await manager.list(owner="alice", limit=1, cursor=first.next_cursor)
            assert [g.id for g in (*first.items, *rest.items)] == [cancelled_a.id, done_a.id]
            assert (rest.total, rest.offset, rest.next_cursor) == (2, None, None)

    async def test_listing_shows_progress_fields(self, url: str) -> None:
        """Listed goals carry status, phase and step counts, like `get` without the steps."""
        async with manager_for(url, QueueProvider()) as manager:
            goal = await manager.wait((await manager.create("a\nb", model="fake")).id)
            [listed] = (await manager.list()).items
        assert listed == attrs.evolve(goal, steps=())

    @pytest.mark.parametrize(
        ("query", "field"),
        [
            ({"status": "done"}, "status"),
            ({"status": "ACTIVE"}, "status"),
            ({"limit": 0}, "limit"),
            ({"limit": 501}, "limit"),
            ({"limit": True}, "limit"),
            ({"limit": "5"}, "limit"),
            ({"offset": -1}, "offset"),
            ({"offset": 1.5}, "offset"),
            ({"offset": False}, "offset"),
            ({"cursor": "nope"}, "cursor"),
            ({"cursor": 5}, "cursor"),
            ({"cursor": encode_cursor(1), "offset": 0}, "cursor"),
            ({"cursor": encode_cursor(1), "offset": 2}, "cursor"),
        ],
    )
    async def test_bad_query_values_name_the_field(
        self, url: str, query: dict[str, object], field: str
    ) -> None:
        """A bad status, limit, offset or cursor (or both of the last two) is an InvalidGoal
        naming that field."""
        async with manager_for(url) as manager:
            with pytest.raises(InvalidGoal) as info:
                await manager.list(**query)  # type: ignore[arg-type]
        assert info.value.field == field
        assert field in str(info.value)
        assert info.value.status == 400

    async def test_limit_bounds_are_accepted(self, url: str) -> None:
        """limit 1 and 500 and offset 0 are valid."""
        async with manager_for(url) as manager:
            assert (await manager.list(limit=1, offset=0)).limit == 1
            assert (await manager.list(limit=500)).limit == 500


class TestLookups:
    """Goals are found by id and by workflow id; unknown ids say so."""

    async def test_by_workflow_finds_the_goal(self, url: str) -> None:
        """The workflow id maps to exactly its goal; an unknown one maps to nothing."""
        async with manager_for(url, QueueProvider()) as manager:
            goal = await manager.create("one", model="fake")
            other = await manager.create("two", model="fake")
            found = await manager.by_workflow(goal.workflow_id)
            assert [g.id for g in found] == [goal.id]
            assert [g.id for g in await manager.by_workflow(other.workflow_id)] == [other.id]
            assert await manager.by_workflow("wf-0000000000000000") == []
            await manager.wait(goal.id)
            await manager.wait(other.id)

    @pytest.mark.parametrize("goal_id", ["goal-0000000000000000", "", "nope"])
    async def test_get_unknown_goal_raises_not_found(self, url: str, goal_id: str) -> None:
        """An unknown id is GoalNotFound (404), for get, wait, cancel and events alike."""
        async with manager_for(url) as manager:
            with pytest.raises(GoalNotFound) as info:
                await manager.get(goal_id)
            assert info.value.status == 404
            with pytest.raises(GoalNotFound):
                await manager.wait(goal_id)
            with pytest.raises(GoalNotFound):
                await manager.cancel(goal_id)
            with pytest.raises(GoalNotFound):
                async for _ in manager.events(goal_id):
                    pass  # pragma: no cover


class TestWait:
    """`wait` returns the goal once it has ended, or raises TimeoutError."""

    async def test_wait_times_out_on_a_goal_that_does_not_end(self, url: str) -> None:
        """A timeout shorter than the goal is a TimeoutError and leaves the goal running."""
        provider = GatedProvider()
        async with manager_for(url, provider) as manager:
            goal = await manager.create("slow", model="gated")
            await provider.started[goal.id].wait()
            with pytest.raises(TimeoutError):
                await manager.wait(goal.id, timeout=0.05)
            assert (await manager.get(goal.id)).status == "active"
            provider.gates[goal.id].set()
            assert (await manager.wait(goal.id, timeout=10)).status == "completed"

    async def test_wait_sees_an_end_written_by_another_manager(self, tmp_path: Path) -> None:
        """A goal cancelled through another manager (no shared bus) ends the wait here too."""
        url = f"sqlite:///{tmp_path / 'shared.db'}"
        provider = GatedProvider()
        async with manager_for(url, provider, lease_ttl=1) as here:
            goal = await here.create("slow", model="gated")
            await provider.started[goal.id].wait()
            async with anyio.create_task_group() as tg:
                waited: list[Goal] = []

                async def wait() -> None:
                    waited.append(await here.wait(goal.id, timeout=10))

                tg.start_soon(wait)
                await anyio.wait_all_tasks_blocked()
                async with manager_for(url, GatedProvider(), lease_ttl=1) as there:
                    await there.cancel(goal.id)
        assert [g.status for g in waited] == ["cancelled"]

    async def test_wait_on_an_ended_goal_returns_at_once(self, url: str) -> None:
        """Waiting again on a finished goal returns it unchanged."""
        async with manager_for(url, QueueProvider()) as manager:
            goal = await manager.wait((await manager.create("x", model="fake")).id)
            assert await manager.wait(goal.id, timeout=1) == goal

    async def test_wait_with_zero_timeout_on_an_ended_goal_returns_it(self, url: str) -> None:
        """An ended goal needs no waiting: any timeout, even 0, returns it on every backend."""
        async with manager_for(url, QueueProvider()) as manager:
            goal = await manager.wait((await manager.create("x", model="fake")).id)
            assert await manager.wait(goal.id, timeout=0) == goal


class TestConcurrencyLimit:
    """`max_concurrent` bounds the goals running at once; waiting goals start oldest first."""

    async def test_running_goals_never_exceed_the_limit(self, url: str) -> None:
        """With a limit of 2 and five goals, two run; each freed slot goes to the oldest waiter."""
        provider = GatedProvider()
        async with manager_for(url, provider, max_concurrent=2) as manager:
            goals = [
                (await manager.create(f"goal {i}", model="gated", mode="direct")).id
                for i in range(5)
            ]
            await provider.started[goals[0]].wait()
            await provider.started[goals[1]].wait()
            assert manager.running == {goals[0], goals[1]}
            # Goals claimed together start in either order (trio shuffles its run queue).
            assert sorted(provider.order) == sorted(goals[:2])
            assert [(await manager.get(g)).phase for g in goals[2:]] == ["created"] * 3

            # Free the *second* slot first: the next goal to start is still the oldest waiter.
            provider.gates[goals[1]].set()
            await manager.wait(goals[1])
            await provider.started[goals[2]].wait()
            assert provider.order[2:] == goals[2:3]
            assert manager.running == {goals[0], goals[2]}

            provider.gates[goals[0]].set()
            await provider.started[goals[3]].wait()
            provider.gates[goals[2]].set()
            await provider.started[goals[4]].wait()
            assert provider.order[2:] == goals[2:]
            for goal_id in goals[3:]:
                provider.gates[goal_id].set()
            finished = [await manager.wait(g) for g in goals]
        assert {g.status for g in finished} == {"completed"}
        assert provider.peak == 2

    async def test_a_goal_created_with_a_free_slot_runs_without_a_claim(self, url: str) -> None:
        """A free slot: the goal is stored leased to its creator and runs at once. No free
        slot: it waits unleased, and the scheduler claims it when a slot frees up."""
        provider = GatedProvider()
        claimed: list[str] = []
        async with manager_for(url, provider, max_concurrent=1) as manager:
            store: Any = manager.storage
            claim = store.claim_goals

            async def counted(*args: Any, **kwargs: Any) -> list[Goal]:
                goals: list[Goal] = await claim(*args, **kwargs)
                claimed.extend(goal.id for goal in goals)
                return goals

            store.claim_goals = counted
            first = await manager.create("one", model="gated", mode="direct")
            assert manager.running == {first.id}  # started by create itself
            await provider.started[first.id].wait()
            second = await manager.create("two", model="gated", mode="direct")
            assert manager.running == {first.id}
            provider.gates[first.id].set()
            await provider.started[second.id].wait()
            provider.gates[second.id].set()
            done = [await manager.wait(g.id) for g in (first, second)]
        assert [g.status for g in done] == ["completed", "completed"]
        assert claimed == [second.id]


class TestManagerIsolation:
    """Two managers in one process share neither plugins nor state."""

    async def test_two_managers_do_not_see_each_other(self, url: str, tmp_path: Path) -> None:
        """Plugins and goals of one manager are invisible to the other."""
        recorder = EventRecorder()
        provider = QueueProvider("only-a")
        other_url = "memory://" if url == "memory://" else f"sqlite:///{tmp_path / 'other.db'}"
        async with (
            manager_for(url, provider, recorder) as first,
            manager_for(other_url) as second,
        ):
            assert first.plugin_manager is not second.plugin_manager
            assert first.plugin_manager.is_registered(recorder)
            assert not second.plugin_manager.is_registered(recorder)
            goal = await first.create("mine", model="only-a")
            with pytest.raises(InvalidGoal) as info:
                await second.create("theirs", model="only-a")
            assert info.value.field == "model"
            with pytest.raises(GoalNotFound):
                await second.get(goal.id)
            assert (await second.list()).total == 0
            await first.wait(goal.id)
            scripted = await second.wait((await second.create("Write a poem.")).id)
        assert scripted.status == "completed"
        assert {e.goal_id for e in recorder.events} == {goal.id}


class TestIdempotentCreate:
    """`create(idempotency_key=...)` turns a retried request into the original goal."""

    async def test_same_key_same_fields_returns_the_original_goal(self, url: str) -> None:
        """Repeating a create with its key stores nothing new and returns the first goal."""
        async with manager_for(url) as manager:
            first = await manager.create("Write tests", idempotency_key="req-1", owner="alice")
            again = await manager.create("Write tests", idempotency_key="req-1", owner="alice")
            assert again.id == first.id
            assert (await manager.list()).total == 1

    async def test_same_key_other_fields_is_a_conflict(self, url: str) -> None:
        """A key reused for a different request is a GoalConflict naming the key."""
        async with manager_for(url) as manager:
            await manager.create("Write tests", idempotency_key="req-1")
            with pytest.raises(GoalConflict, match="Idempotency-Key"):
                await manager.create("Write docs", idempotency_key="req-1")
            assert (await manager.list()).total == 1

    @pytest.mark.parametrize("key", ["", "x" * 256, "bad\nkey"])
    async def test_a_malformed_key_is_refused(self, url: str, key: str) -> None:
        """Empty, over-long or unprintable keys are an InvalidGoal naming the field."""
        async with manager_for(url) as manager:
            with pytest.raises(InvalidGoal) as caught:
                await manager.create("Write tests", idempotency_key=key)
            assert caught.value.field == "idempotency_key"

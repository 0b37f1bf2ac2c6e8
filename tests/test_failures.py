"""Failures, retries and timeouts: what a user sees when a provider misbehaves."""

from __future__ import annotations

import math
from collections.abc import Sequence

import anyio
import pytest

from goalkit import GoalManager, InvalidGoal, RetryPolicy, StepSpec
from goalkit.models import Event, Goal, Step
from goalkit.retry import will_retry
from goalkit.testing import EventRecorder, QueueProvider

pytestmark = pytest.mark.anyio


def manager_for(*plugins: object, **options: object) -> GoalManager:
    options.setdefault("retry_backoff", 0)
    return GoalManager("memory://", plugins=plugins, entry_points=False, **options)  # type: ignore[arg-type]


async def events_of(manager: GoalManager, goal_id: str) -> list[Event]:
    return [event async for event in manager.events(goal_id)]


async def sleep_long(goal: Goal, step: Step, previous: Sequence[Step]) -> str:
    await anyio.sleep(60)
    return "too late"  # pragma: no cover


class TestStepRetries:
    """A step that raises is retried up to max_retries; past that the goal fails."""

    async def test_a_step_that_keeps_failing_fails_the_goal(self) -> None:
        """Three failing attempts with max_retries=2: the step and the goal carry the error."""
        provider = QueueProvider()
        provider.enqueue_plan(["fetch", "never reached"])
        provider.enqueue(*(RuntimeError(f"boom {i}") for i in (1, 2, 3)))
        async with manager_for(provider) as manager:
            created = await manager.create("flaky", model="fake", max_retries=2)
            goal = await manager.wait(created.id)
            events = await events_of(manager, goal.id)

        assert (goal.status, goal.phase) == ("failed", "failed")
        assert goal.completed_at is not None
        assert (goal.steps_completed, goal.total_steps) == (0, 2)
        assert goal.result is None
        first, second = goal.steps
        assert (first.status, first.attempts) == ("failed", 3)
        assert first.error is not None
        assert first.error.code == "step_error"
        assert first.error.message == "RuntimeError: boom 3"
        assert (second.status, second.attempts, second.error) == ("pending", 0, None)
        assert goal.error is not None
        assert goal.error.code == "step_failed"
        assert "step 1" in goal.error.message
        assert "3 attempt(s)" in goal.error.message
        assert "RuntimeError: boom 3" in goal.error.message
        assert goal.to_dict()["error"] == {"code": "step_failed", "message": goal.error.message}
        assert provider.count(goal.id, 1) == 3
        assert provider.count(goal.id, 2) == 0

        failures = [e for e in events if e.type == "goal.step_failed"]
        assert [(e.data["attempt"], e.data["will_retry"]) for e in failures] == [
            (1, True),
            (2, True),
            (3, False),
        ]
        assert [e.data["error"] for e in failures] == [
            {"code": "step_error", "message": f"RuntimeError: boom {i}"} for i in (1, 2, 3)
        ]
        assert [e.data["attempt"] for e in events if e.type == "goal.step_started"] == [1, 2, 3]
        assert events[-1].type == "goal.failed"
        assert events[-1].data == {"error": goal.error.to_dict(), "steps_completed": 0}

    async def test_max_retries_zero_fails_on_the_first_error(self) -> None:
        """With no retries allowed, one failure ends the goal and will_retry is False."""
        provider = QueueProvider()
        provider.enqueue(ValueError("bad input"))
        async with manager_for(provider) as manager:
            goal = await manager.wait(
                (await manager.create("x", model="fake", mode="direct", max_retries=0)).id
            )
            events = await events_of(manager, goal.id)
        assert goal.status == "failed"
        assert goal.steps[0].attempts == 1
        [failure] = [e for e in events if e.type == "goal.step_failed"]
        assert (failure.data["attempt"], failure.data["will_retry"]) == (1, False)

    async def test_success_after_a_retry(self) -> None:
        """A step that fails once and then succeeds completes with 2 attempts and no error."""
        provider = QueueProvider()
        provider.enqueue_plan(["a", "b"])
        provider.enqueue(RuntimeError("transient"), "ra", "rb")
        async with manager_for(provider) as manager:
            goal = await manager.wait((await manager.create("x", model="fake")).id)
            events = await events_of(manager, goal.id)
        assert goal.status == "completed"
        assert goal.error is None
        assert goal.result == "rb"
        assert [(s.status, s.attempts, s.error, s.result) for s in goal.steps] == [
            ("completed", 2, None, "ra"),
            ("completed", 1, None, "rb"),
        ]
        assert [e.type for e in events][2:6] == [
            "goal.step_started",
            "goal.step_failed",
            "goal.step_started",
            "goal.step_completed",
        ]
        assert events[3].data["will_retry"] is True
        assert events[5].data["attempt"] == 2
        assert [e.id for e in events] == list(range(1, len(events) + 1))

    async def test_the_goal_default_comes_from_the_manager(self) -> None:
        """A goal created without max_retries takes the manager's."""
        provider = QueueProvider()
        provider.enqueue(*(RuntimeError("no") for _ in range(5)))
        async with manager_for(provider, max_retries=1) as manager:
            goal = await manager.wait((await manager.create("x", model="fake", mode="direct")).id)
        assert goal.max_retries == 1
        assert goal.steps[0].attempts == 2


class TestStepTimeout:
    """A provider call longer than step_timeout is cut off, recorded as step_timeout, retried."""

    async def test_a_slow_step_times_out_and_is_retried(self) -> None:
        """The first attempt sleeps past the timeout; the retry answers and the goal completes."""
        provider = QueueProvider()
        provider.enqueue(sleep_long, "quick")
        async with manager_for(provider, step_timeout=0.05) as manager:
            goal = await manager.wait((await manager.create("x", model="fake", mode="direct")).id)
            events = await events_of(manager, goal.id)
        assert goal.status == "completed"
        assert goal.result == "quick"
        assert goal.steps[0].attempts == 2
        [failure] = [e for e in events if e.type == "goal.step_failed"]
        assert failure.data["error"]["code"] == "step_timeout"
        assert "timed out" in failure.data["error"]["message"]
        assert failure.data["will_retry"] is True

    async def test_a_step_that_always_times_out_fails_the_goal(self) -> None:
        """Every attempt timing out fails the goal with the timeout on the step."""
        provider = QueueProvider()
        provider.enqueue(sleep_long, sleep_long)
        async with manager_for(provider, step_timeout=0.05) as manager:
            goal = await manager.wait(
                (await manager.create("x", model="fake", mode="direct", max_retries=1)).id
            )
        assert goal.status == "failed"
        assert goal.error is not None
        assert goal.error.code == "step_failed"
        assert "timed out" in goal.error.message
        step = goal.steps[0]
        assert (step.status, step.attempts) == ("failed", 2)
        assert step.error is not None
        assert step.error.code == "step_timeout"

    async def test_a_providers_own_timeout_error_is_a_step_error(self) -> None:
        """A TimeoutError raised by the provider (say, a socket read) is not step_timeout.

        The goal's step_timeout did not expire, so the error must carry the provider's own
        message rather than claim the step "timed out after 300.0s".
        """
        provider = QueueProvider()
        provider.enqueue(TimeoutError("upstream read timed out"), "ok")
        async with manager_for(provider, step_timeout=300) as manager:
            goal = await manager.wait((await manager.create("x", model="fake", mode="direct")).id)
            events = await events_of(manager, goal.id)
        assert goal.status == "completed"
        [failure] = [e for e in events if e.type == "goal.step_failed"]
        assert failure.data["error"]["code"] == "step_error"
        assert "upstream read timed out" in failure.data["error"]["message"]


class TestBadResults:
    """A step result that is not JSON is a failed attempt with a clear message."""

    @pytest.mark.parametrize("result", [object(), {1, 2}, math.nan, {"k": b"bytes"}])
    async def test_non_json_result_fails_the_attempt(self, result: object) -> None:
        """Non-JSON results are retried, then fail the goal saying 'not JSON-serialisable'."""
        provider = QueueProvider()
        provider.enqueue(result, result)
        async with manager_for(provider) as manager:
            goal = await manager.wait(
                (await manager.create("x", model="fake", mode="direct", max_retries=1)).id
            )
        assert goal.status == "failed"
        step = goal.steps[0]
        assert step.attempts == 2
        assert step.result is None
        assert step.error is not None
        assert step.error.code == "step_error"
        assert "not JSON-serialisable" in step.error.message

    async def test_a_good_result_after_a_bad_one_completes(self) -> None:
        """A retry that returns JSON completes the step."""
        provider = QueueProvider()
        provider.enqueue(object(), {"ok": True})
        async with manager_for(provider) as manager:
            goal = await manager.wait((await manager.create("x", model="fake", mode="direct")).id)
        assert (goal.status, goal.result) == ("completed", {"ok": True})


class TestPlanFailures:
    """A plan that raises or is malformed is retried, then fails the goal with a clear error."""

    @pytest.mark.parametrize(
        ("plan", "code", "message"),
        [
            (RuntimeError("model down"), "plan_failed", "RuntimeError: model down"),
            ([], "invalid_plan", "plan is empty"),
            (["a", "b", "c"], "invalid_plan", "plan has 3 steps, more than max_steps=2"),
            ([1, 2], "invalid_plan", "plan step 1 is a int, not a str or StepSpec"),
            (["ok", {"title": "x"}], "invalid_plan", "plan step 2 is a dict"),
            ({"title": "x"}, "invalid_plan", "plan must be a list of strings or StepSpec"),
            ("one step", "invalid_plan", "plan must be a list of strings or StepSpec"),
            (["fine", "   "], "invalid_plan", "plan step 2 has an empty title"),
            ([StepSpec("t", description=5)], "invalid_plan", "description that is not a string"),  # type: ignore[arg-type]
        ],
        ids=[
            "exception",
            "empty",
            "over-max-steps",
            "ints",
            "dicts",
            "a-dict",
            "a-string",
            "blank-title",
            "bad-description",
        ],
    )
    async def test_bad_plans_fail_the_goal_after_retries(
        self, plan: object, code: str, message: str
    ) -> None:
        """Each attempt is retried; the goal ends failed with the plan's error code and reason."""
        provider = QueueProvider()
        provider.enqueue_plan(plan, plan)  # type: ignore[arg-type]
        async with manager_for(provider) as manager:
            created = await manager.create("x", model="fake", max_steps=2, max_retries=1)
            goal = await manager.wait(created.id)
            events = await events_of(manager, goal.id)
        assert (goal.status, goal.phase) == ("failed", "failed")
        assert goal.error is not None
        assert goal.error.code == code
        assert message in goal.error.message
        assert "2 attempt(s)" in goal.error.message
        assert (goal.total_steps, goal.steps) == (0, ())
        assert [c[0] for c in provider.calls] == ["plan", "plan"]
        assert [e.type for e in events] == ["goal.created", "goal.failed"]
        assert events[-1].data["error"] == goal.error.to_dict()

    async def test_a_plan_that_fails_once_is_retried(self) -> None:
        """A plan that raises, then answers, goes on to run the steps."""
        provider = QueueProvider()
        provider.enqueue_plan(RuntimeError("hiccup"), ["a", "b"])
        async with manager_for(provider) as manager:
            goal = await manager.wait((await manager.create("x", model="fake")).id)
        assert goal.status == "completed"
        assert [s.title for s in goal.steps] == ["a", "b"]
        assert [c[0] for c in provider.calls] == ["plan", "plan", "run_step", "run_step"]

    async def test_a_plan_that_times_out_fails_as_plan_timeout(self) -> None:
        """Planning past step_timeout is a plan_timeout failure."""

        class SlowPlanner(QueueProvider):
            async def plan(self, goal: Goal, max_steps: int) -> Sequence[str | StepSpec]:
                await anyio.sleep(60)
                return []  # pragma: no cover

        async with manager_for(SlowPlanner(), step_timeout=0.05) as manager:
            goal = await manager.wait((await manager.create("x", model="fake", max_retries=0)).id)
        assert goal.status == "failed"
        assert goal.error is not None
        assert goal.error.code == "plan_timeout"
        assert "timed out" in goal.error.message


class TestBackoff:
    """Retries wait with exponential backoff and jitter, decided by a pure `RetryPolicy`."""

    def test_delay_grows_exponentially_up_to_the_cap(self) -> None:
        """With no jitter drawn the delay is base * factor ** (attempt - 1), capped."""
        policy = RetryPolicy(base=0.5, factor=2.0, cap=3.0, jitter=0.5)
        no_jitter = [policy.delay(n, rand=lambda: 0.0) for n in range(1, 6)]
        assert no_jitter == [0.5, 1.0, 2.0, 3.0, 3.0]

    @pytest.mark.parametrize("attempt", [1, 2, 5, 30])
    @pytest.mark.parametrize("rand", [0.0, 0.25, 0.5, 0.999999])
    def test_jitter_stays_within_bounds(self, attempt: int, rand: float) -> None:
        """The delay is drawn from [(1 - jitter) * d, d], d being the un-jittered delay."""
        policy = RetryPolicy(base=1.0, factor=3.0, cap=20.0, jitter=0.4)
        full = min(20.0, 3.0 ** (attempt - 1))
        delay = policy.delay(attempt, rand=lambda: rand)
        assert 0.6 * full <= delay <= full
        assert delay == pytest.approx(full * (1 - 0.4 * rand))

    def test_zero_base_means_no_wait(self) -> None:
        """retry_backoff=0 gives a zero delay for every attempt."""
        assert {RetryPolicy(base=0).delay(n) for n in range(1, 10)} == {0}

    @pytest.mark.parametrize(
        "options", [{"base": -1}, {"factor": 0.5}, {"cap": -1}, {"jitter": 1.5}, {"jitter": -0.1}]
    )
    def test_invalid_policies_are_refused(self, options: dict[str, float]) -> None:
        """Negative delays, shrinking factors and jitter outside 0–1 are errors."""
        with pytest.raises(ValueError):
            RetryPolicy(**options)

    @pytest.mark.parametrize(
        ("attempts", "max_retries", "expected"),
        [(1, 0, False), (1, 1, True), (2, 1, False), (2, 2, True), (3, 2, False), (11, 10, False)],
    )
    def test_will_retry_allows_one_plus_max_retries_attempts(
        self, attempts: int, max_retries: int, expected: bool
    ) -> None:
        """A failed attempt is retried while attempts ≤ max_retries."""
        assert will_retry(attempts, max_retries) is expected

    async def test_the_engine_asks_the_policy_after_each_retried_attempt(self) -> None:
        """A custom RetryPolicy given as retry_backoff is consulted with attempts 1, 2 …"""
        asked: list[int] = []

        class Recording(RetryPolicy):
            def delay(self, attempt: int, rand: object = None) -> float:  # type: ignore[override]
                asked.append(attempt)
                return 0.0

        provider = QueueProvider()
        provider.enqueue(RuntimeError("1"), RuntimeError("2"), RuntimeError("3"))
        async with manager_for(provider, retry_backoff=Recording()) as manager:
            goal = await manager.wait(
                (await manager.create("x", model="fake", mode="direct", max_retries=2)).id
            )
        assert goal.status == "failed"
        # Attempts 1 and 2 are retried after a delay; attempt 3 is final and waits for nothing.
        assert asked == [1, 2]


class TestUnknownModel:
    """An unknown model is refused at creation, naming the model field."""

    async def test_unknown_model_is_invalid_goal(self) -> None:
        """InvalidGoal(field='model'), status 400, and nothing is stored."""
        recorder = EventRecorder()
        async with manager_for(recorder) as manager:
            with pytest.raises(InvalidGoal) as info:
                await manager.create("x", model="no-such-model")
            assert info.value.field == "model"
            assert "no-such-model" in str(info.value)
            assert info.value.status == 400
            assert (await manager.list()).total == 0
        assert recorder.events == []

    async def test_default_model_unknown_is_invalid_goal(self) -> None:
        """A manager whose default model nobody serves refuses goals created without a model."""
        async with manager_for(default_model="missing") as manager:
            with pytest.raises(InvalidGoal) as info:
                await manager.create("x")
        assert info.value.field == "model"


class TestProviderErrors:
    """A provider steers retries with `ProviderError`: final failures are not retried."""

    async def test_a_non_retryable_error_fails_the_step_at_once(self) -> None:
        """retryable=False spends no retries: one attempt, then the goal fails."""
        from goalkit import GoalManager, ProviderError
        from goalkit.testing import QueueProvider

        provider = QueueProvider()
        provider.enqueue(ProviderError("401 invalid API key", retryable=False))
        async with GoalManager(
            "memory://", plugins=[provider], max_retries=3, retry_backoff=0, entry_points=False
        ) as manager:
            goal = await manager.create("x", model="fake", mode="direct")
            goal = await manager.wait(goal.id, timeout=5)
        assert goal.status == "failed"
        assert goal.steps[0].attempts == 1
        assert goal.error is not None and "invalid API key" in goal.error.message

    async def test_retry_after_stretches_the_backoff(self) -> None:
        """A retryable error with retry_after waits at least that long before the retry."""
        import anyio

        from goalkit import GoalManager, ProviderError
        from goalkit.testing import QueueProvider

        provider = QueueProvider()
        provider.enqueue(ProviderError("429 slow down", retry_after=0.3), "ok")
        async with GoalManager(
            "memory://", plugins=[provider], retry_backoff=0, entry_points=False
        ) as manager:
            start = anyio.current_time()
            goal = await manager.create("x", model="fake", mode="direct")
            goal = await manager.wait(goal.id, timeout=5)
            waited = anyio.current_time() - start
        assert goal.status == "completed" and goal.steps[0].attempts == 2
        assert waited >= 0.3

"""Cancelling a goal: prompt, final, and nothing runs after it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import anyio
import pytest

import goalkit
from goalkit import GoalConflict, GoalManager, GoalNotFound
from goalkit.models import Event, Goal, Step
from goalkit.testing import EventRecorder

pytestmark = pytest.mark.anyio

PROMPT = 1.0
"""Seconds within which a cancel must return and the in-flight call must be stopped."""


class HangingProvider:
    """A provider plugin: a 3-step plan; steps listed in `hang` sleep for a minute.

    It logs every call, and records whether an in-flight call saw cancellation.
    """

    def __init__(
        self, model: str = "hanging", *, hang: Sequence[int] = (2,), plan_hangs: bool = False
    ) -> None:
        self.model = model
        self.hang = set(hang)
        self.plan_hangs = plan_hangs
        self.calls: list[tuple[str, str, int]] = []
        self.entered: defaultdict[str, anyio.Event] = defaultdict(anyio.Event)
        self.left: defaultdict[str, anyio.Event] = defaultdict(anyio.Event)
        self.saw_cancel: dict[str, bool] = {}

    @goalkit.hookimpl
    def goalkit_model_provider(self, model: str) -> HangingProvider | None:
        return self if model == self.model else None

    async def _hang(self, goal_id: str) -> None:
        self.saw_cancel[goal_id] = False
        self.entered[goal_id].set()
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            self.saw_cancel[goal_id] = True
            raise
        finally:
            self.left[goal_id].set()

    async def plan(self, goal: Goal, max_steps: int) -> list[str]:
        self.calls.append(("plan", goal.id, 0))
        if self.plan_hangs:
            await self._hang(goal.id)
        return ["one", "two", "three"]

    async def run_step(self, goal: Goal, step: Step, previous: Sequence[Step]) -> str:
        self.calls.append(("run_step", goal.id, step.index))
        if step.index in self.hang:
            await self._hang(goal.id)
        return f"step {step.index} done"


def manager_for(*plugins: object, **options: object) -> GoalManager:
    options.setdefault("retry_backoff", 0)
    return GoalManager("memory://", plugins=plugins, entry_points=False, **options)  # type: ignore[arg-type]


async def events_of(manager: GoalManager, goal_id: str) -> list[Event]:
    return [event async for event in manager.events(goal_id)]


class TestCancelInFlight:
    """Cancelling a goal whose provider call is running stops that call promptly."""

    async def test_cancel_stops_the_in_flight_call_within_a_second(self) -> None:
        """cancel returns, and the provider call is cancelled, within 1 s of asking."""
        provider = HangingProvider(hang=[2])
        recorder = EventRecorder()
        async with manager_for(provider, recorder) as manager:
            goal = await manager.create("three steps", model="hanging")
            await provider.entered[goal.id].wait()

            start = anyio.current_time()
            cancelled = await manager.cancel(goal.id)
            returned = anyio.current_time() - start
            with anyio.fail_after(PROMPT):
                await provider.left[goal.id].wait()
            stopped = anyio.current_time() - start

            assert returned <= PROMPT
            assert stopped <= PROMPT
            assert provider.saw_cancel[goal.id] is True

            # The goal as `cancel` returned it: the data DELETE answers with.
            assert (cancelled.status, cancelled.phase) == ("cancelled", "cancelled")
            assert (cancelled.steps_completed, cancelled.total_steps) == (1, 3)
            assert cancelled.current_step is None
            assert cancelled.completed_at is not None
            assert [s.status for s in cancelled.steps] == ["completed", "cancelled", "cancelled"]
            assert cancelled.steps[0].result == "step 1 done"
            assert cancelled.result is None
            assert cancelled.error is None

            # With max_concurrent=100 there is no slot to wait for; wait() must still agree.
            assert await manager.wait(goal.id) == cancelled
            events = await events_of(manager, goal.id)

        assert events[-1].type == "goal.cancelled"
        assert events[-1].data == {"steps_completed": 1, "total_steps": 3}
        assert [e.id for e in events] == list(range(1, len(events) + 1))
        assert sum(e.terminal for e in events) == 1
        assert recorder.of(goal.id) == events
        # Stored state after the coordinator wound down is still the cancelled one.
        assert provider.calls == [
            ("plan", goal.id, 0),
            ("run_step", goal.id, 1),
            ("run_step", goal.id, 2),
        ]

    async def test_no_step_starts_after_cancel(self) -> None:
        """Once cancelled, the goal's coordinator stops: steps 3+ never reach the provider."""
        provider = HangingProvider(hang=[2])
        # One slot: the second goal can only run once the cancelled goal's coordinator is gone.
        async with manager_for(provider, max_concurrent=1) as manager:
            goal = await manager.create("three steps", model="hanging")
            await provider.entered[goal.id].wait()
            await manager.cancel(goal.id)
            follower = await manager.create("runs after", model="hanging", mode="direct")
            assert (await manager.wait(follower.id)).status == "completed"
            after = await manager.get(goal.id)
            events = await events_of(manager, goal.id)
        assert [c for c in provider.calls if c[1] == goal.id] == [
            ("plan", goal.id, 0),
            ("run_step", goal.id, 1),
            ("run_step", goal.id, 2),
        ]
        assert after.status == "cancelled"
        assert [s.status for s in after.steps] == ["completed", "cancelled", "cancelled"]
        assert [s.attempts for s in after.steps] == [1, 1, 0]
        assert events[-1].type == "goal.cancelled"
        assert "goal.step_failed" not in [e.type for e in events]

    async def test_cancel_during_planning(self) -> None:
        """A goal cancelled while its plan call runs stops that call and never gets steps."""
        provider = HangingProvider(plan_hangs=True)
        async with manager_for(provider, max_concurrent=1) as manager:
            goal = await manager.create("plan forever", model="hanging")
            await provider.entered[goal.id].wait()
            start = anyio.current_time()
            cancelled = await manager.cancel(goal.id)
            with anyio.fail_after(PROMPT):
                await provider.left[goal.id].wait()
            assert anyio.current_time() - start <= PROMPT
            assert provider.saw_cancel[goal.id] is True
            follower = await manager.create("next", model="hanging", mode="direct")
            await manager.wait(follower.id)
            after = await manager.get(goal.id)
            events = await events_of(manager, goal.id)
        assert (cancelled.status, cancelled.total_steps, cancelled.steps_completed) == (
            "cancelled",
            0,
            0,
        )
        assert after.steps == ()
        assert after.phase == "cancelled"
        assert [e.type for e in events] == ["goal.created", "goal.cancelled"]
        assert [c for c in provider.calls if c[1] == goal.id] == [("plan", goal.id, 0)]


class TestCancelWaiting:
    """A goal still waiting for a slot is cancelled without ever running."""

    async def test_a_waiting_goal_is_never_run(self) -> None:
        """With max_concurrent=1, the queued goal is cancelled and skipped; the next one runs."""
        provider = HangingProvider(hang=[1])
        async with manager_for(provider, max_concurrent=1) as manager:
            blocker = await manager.create("hold the slot", model="hanging")
            await provider.entered[blocker.id].wait()
            waiting = await manager.create("queued", model="hanging")
            cancelled = await manager.cancel(waiting.id)
            assert (cancelled.status, cancelled.phase) == ("cancelled", "cancelled")
            assert (cancelled.steps_completed, cancelled.total_steps) == (0, 0)

            await manager.cancel(blocker.id)
            provider.hang.clear()
            later = await manager.create("later", model="hanging", mode="direct")
            assert (await manager.wait(later.id)).status == "completed"
            events = await events_of(manager, waiting.id)
        assert [c for c in provider.calls if c[1] == waiting.id] == []
        assert [e.type for e in events] == ["goal.created", "goal.cancelled"]


class TestCancelConflicts:
    """Cancelling a goal that has ended is a conflict; an unknown goal is not found."""

    async def test_cancel_of_an_ended_goal_is_a_conflict(self) -> None:
        """Completed, failed and already-cancelled goals answer GoalConflict (409)."""

        class Failing(HangingProvider):
            async def run_step(self, goal: Goal, step: Step, previous: Sequence[Step]) -> str:
                raise RuntimeError("nope")

        quick, hanging = HangingProvider("quick", hang=[]), HangingProvider(hang=[1])
        async with manager_for(quick, hanging, Failing("failing"), max_retries=0) as manager:
            completed = await manager.wait((await manager.create("a", model="quick")).id)
            failed = await manager.wait((await manager.create("b", model="failing")).id)
            running = await manager.create("c", model="hanging")
            await hanging.entered[running.id].wait()
            cancelled = await manager.cancel(running.id)
            assert (completed.status, failed.status, cancelled.status) == (
                "completed",
                "failed",
                "cancelled",
            )
            for goal in (completed, failed, cancelled):
                with pytest.raises(GoalConflict) as info:
                    await manager.cancel(goal.id)
                assert info.value.status == 409
                assert goal.status in str(info.value)
                assert (await manager.get(goal.id)).status == goal.status
                assert (await manager.get(goal.id)).last_event_id == goal.last_event_id

    async def test_cancel_of_an_unknown_goal_is_not_found(self) -> None:
        """An unknown id is GoalNotFound."""
        async with manager_for() as manager:
            with pytest.raises(GoalNotFound):
                await manager.cancel("goal-0000000000000000")

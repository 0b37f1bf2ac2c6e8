"""Regression tests for edge cases of the engine found in review: each failed before its fix."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from goalkit import GoalManager, StorageError, hookimpl
from goalkit.models import Event, Goal, Step
from goalkit.storage.memory import MemoryStorage
from goalkit.testing import QueueProvider

pytestmark = pytest.mark.anyio


class Blocking:
    """A provider plugin for model ``block`` whose calls wait until cancelled."""

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.cancelled = anyio.Event()

    @hookimpl
    def goalkit_model_provider(self, model: str) -> Blocking | None:
        return self if model == "block" else None

    async def plan(self, goal: Goal, max_steps: int) -> list[str]:
        return ["wait"]

    async def run_step(self, goal: Goal, step: Step, previous: Sequence[Step]) -> str:
        self.started.set()
        try:
            await anyio.sleep(60)
        finally:
            self.cancelled.set()
        return "never"


class TestFinalFailureSurvivesACrash:
    """A step failed for good stays failed, even if the goal's own failure was not stored."""

    async def test_goal_fails_on_resume_without_running_the_step_again(self) -> None:
        """The goal.failed write is lost once; on reclaim the goal fails, the step is not re-run."""
        inner = MemoryStorage()

        class LoseOneWrite:
            """Serves ``flaky://``: memory storage whose first goal.failed commit fails."""

            lost = False

            @hookimpl
            def goalkit_storage(self, url: str) -> Any:
                if url != "flaky://":
                    return None
                plugin = self

                class Flaky(MemoryStorage):
                    async def commit(self, transition: Any) -> tuple[Event, ...]:
                        if transition.event == "goal.failed" and not plugin.lost:
                            plugin.lost = True
                            raise StorageError("disk I/O error (injected)")
                        return await inner.commit(transition)

                    def __getattribute__(self, name: str) -> Any:
                        if name == "commit":
                            return object.__getattribute__(self, name)
                        return getattr(inner, name)

                return Flaky()

        provider = QueueProvider()
        provider.enqueue(ValueError("boom"))
        async with GoalManager(
            "flaky://",
            plugins=[provider, LoseOneWrite()],
            max_retries=0,
            retry_backoff=0,
            lease_ttl=0.3,
            entry_points=False,
        ) as manager:
            goal = await manager.create("one step", model="fake", mode="direct")
            done = await manager.wait(goal.id, timeout=10)
        assert done.status == "failed"
        assert done.error is not None and done.error.code == "step_failed"
        assert provider.count(goal.id, 1) == 1


class TestSyncSinks:
    """A synchronous sink that blocks runs in a thread and stalls nothing."""

    async def test_a_blocking_sync_sink_does_not_hold_up_the_workflow(self) -> None:
        """The goal completes while a sink sleeping 0.2 s per event is still far behind."""
        seen: list[str] = []

        class SlowSync:
            @hookimpl
            def goalkit_event(self, event: Event) -> None:
                time.sleep(0.2)
                seen.append(event.type)

        async with GoalManager(
            "memory://", plugins=[SlowSync()], retry_backoff=0, entry_points=False
        ) as manager:
            goal = await manager.create("a. b. c")
            done = await manager.wait(goal.id, timeout=5)
            assert done.status == "completed"
            assert len(seen) < done.last_event_id
        assert seen[-1] == "goal.completed"  # drained on exit


class TestCleanExit:
    """Leaving a manager hands its unfinished goals back at once."""

    async def test_next_manager_resumes_without_waiting_for_the_lease(self, tmp_path: Path) -> None:
        """With a 60 s lease, a second manager starts the goals the first left, right away."""
        url = f"sqlite:///{tmp_path / 'g.db'}"
        blocking = Blocking()
        async with GoalManager(url, plugins=[blocking], lease_ttl=60, entry_points=False) as a:
            ids = [(await a.create(f"goal {i}", model="block")).id for i in range(3)]
            await blocking.started.wait()
        fast = QueueProvider("block")
        async with GoalManager(url, plugins=[fast], lease_ttl=60, entry_points=False) as b:
            with anyio.fail_after(5):
                done = [await b.wait(goal_id) for goal_id in ids]
        assert {g.status for g in done} == {"completed"}


class TestProviderGoneOnResume:
    """A goal whose provider now answers garbage fails clearly instead of looping."""

    async def test_garbage_provider_on_resume_fails_the_goal(self, tmp_path: Path) -> None:
        """The second manager's provider plugin returns an int: provider_unavailable."""
        url = f"sqlite:///{tmp_path / 'g.db'}"
        blocking = Blocking()
        async with GoalManager(url, plugins=[blocking], entry_points=False) as a:
            goal = await a.create("x", model="block")
            await blocking.started.wait()

        class Garbage:
            @hookimpl
            def goalkit_model_provider(self, model: str) -> Any:
                return 42 if model == "block" else None

        async with GoalManager(url, plugins=[Garbage()], entry_points=False) as b:
            done = await b.wait(goal.id, timeout=5)
        assert done.status == "failed"
        assert done.error is not None and done.error.code == "provider_unavailable"


class TestPlanErrors:
    """A provider's own ValueError while planning is a plan failure, not an invalid plan."""

    async def test_provider_value_error_is_plan_failed_with_its_type(self) -> None:
        """json.JSONDecodeError from the provider is reported as such."""
        import json

        provider = QueueProvider()
        try:
            json.loads("{")
        except json.JSONDecodeError as exc:
            provider.enqueue_plan(exc)
        async with GoalManager(
            "memory://", plugins=[provider], max_retries=0, entry_points=False
        ) as manager:
            goal = await manager.wait((await manager.create("x", model="fake")).id, timeout=5)
        assert goal.error is not None
        assert goal.error.code == "plan_failed"
        assert "JSONDecodeError" in goal.error.message


class TestEventStreamClose:
    """Closing an event stream ends it, even with events already buffered."""

    async def test_close_after_the_first_event_yields_nothing_more(self) -> None:
        """A finished goal's stream closed after event 1 gives no event 2."""
        async with GoalManager("memory://", retry_backoff=0, entry_points=False) as manager:
            goal = await manager.wait((await manager.create("a. b")).id, timeout=5)
            stream = manager.events(goal.id)
            first = await stream.__anext__()
            stream.close()
            assert first.id == 1
            assert [event async for event in stream] == []


class TestRemoteCancel:
    """A cancel from another manager on the same store stops the call here promptly."""

    async def test_call_stops_within_a_heartbeat(self, tmp_path: Path) -> None:
        """Manager B cancels a goal A runs; A's in-flight call is cancelled within ~1 s."""
        url = f"sqlite:///{tmp_path / 'g.db'}"
        blocking = Blocking()
        async with GoalManager(url, plugins=[blocking], lease_ttl=30, entry_points=False) as a:
            goal = await a.create("x", model="block")
            await blocking.started.wait()
            async with GoalManager(url, plugins=[Blocking()], entry_points=False) as b:
                cancelled = await b.cancel(goal.id)
                assert cancelled.status == "cancelled"
                with anyio.fail_after(3):
                    await blocking.cancelled.wait()
            with anyio.fail_after(2):
                while goal.id in a.running:  # noqa: ASYNC110 - no event marks a coordinator's exit
                    await anyio.sleep(0.01)

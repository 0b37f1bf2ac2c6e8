"""Guarantees of `GoalManager` that only show under races, each pinned by a test.

Every test drives managers through the public API, with plugins written as a plugin author
writes them: a storage plugin serving ``shared://`` (one `MemoryStorage` for every manager
that opens it, as a database file would be) that can hold a commit up before or after it
writes, and `QueueProvider` answers that block until released or cancelled. Each test fails
when the guarantee it names is taken out of ``goalkit/manager.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence

import anyio
import pytest

from goalkit import GoalConflict, GoalManager, StorageError, hookimpl
from goalkit.models import Event, Goal, Step
from goalkit.storage.memory import MemoryStorage
from goalkit.testing import EventRecorder, QueueProvider
from goalkit.transitions import Transition

pytestmark = pytest.mark.anyio

Hook = Callable[[], Awaitable[None]]


class Store(MemoryStorage):
    """A memory store whose commits a test can hold up, once per event type."""

    def __init__(self) -> None:
        super().__init__()
        self.before: dict[str, Hook] = {}
        self.after: dict[str, Hook] = {}
        self.conflicts = 0
        self.failing_renewals: set[str] = set()
        self.lease_lost = anyio.Event()

    @staticmethod
    def _hook(hooks: dict[str, Hook], transition: Transition) -> Hook | None:
        """The hook of the first link of the (possibly chained) write that has one."""
        for link in transition.links():
            hook = hooks.pop(link.event or "", None)
            if hook is not None:
                return hook
        return None

    async def commit(self, transition: Transition) -> tuple[Event, ...]:
        hook = self._hook(self.before, transition)
        if hook is not None:
            await hook()
        try:
            events = await super().commit(transition)
        except GoalConflict:
            self.conflicts += 1
            raise
        hook = self._hook(self.after, transition)
        if hook is not None:
            await hook()  # written, but not yet returned to the manager
        return events

    async def renew_leases(self, owner: str, goal_ids: Iterable[str], *, ttl: float) -> set[str]:
        if owner in self.failing_renewals:
            raise StorageError("disk I/O error (injected)")
        goal_ids = list(goal_ids)
        held = await super().renew_leases(owner, goal_ids, ttl=ttl)
        if set(goal_ids) - held:
            self.lease_lost.set()
        return held


class Shared:
    """A storage plugin serving ``shared://``: one `Store` for every manager that opens it."""

    def __init__(self) -> None:
        self.store = Store()

    @hookimpl
    def goalkit_storage(self, url: str) -> Store | None:
        return self.store if url == "shared://" else None


class Call:
    """A `QueueProvider` answer that waits for `release` (or `seconds`), noting start and stop."""

    def __init__(self, seconds: float = 60) -> None:
        self.seconds = seconds
        self.release = anyio.Event()
        self.started = anyio.Event()
        self.stopped = anyio.Event()

    async def __call__(self, goal: Goal, step: Step, previous: Sequence[Step]) -> str:
        self.started.set()
        try:
            with anyio.move_on_after(self.seconds):
                await self.release.wait()
        finally:
            self.stopped.set()
        return f"step {step.index}"


def manager(shared: Shared, *plugins: object, lease_ttl: float = 30.0) -> GoalManager:
    return GoalManager(
        "shared://", plugins=[shared, *plugins], lease_ttl=lease_ttl, entry_points=False
    )


async def until_stopped(mgr: GoalManager, goal_id: str) -> None:
    with anyio.fail_after(3):
        while goal_id in mgr.running:  # noqa: ASYNC110 - no event marks a coordinator's exit
            await anyio.sleep(0.01)


class TestCancelRetriesOnConflict:
    """A cancel whose version fence trips on a coordinator's commit reads again and cancels."""

    async def test_cancel_racing_a_step_commit_still_cancels(self) -> None:
        """B's cancel read the goal, then A's coordinator moved it on: the cancel still lands."""
        shared, provider = Shared(), QueueProvider("fake")
        first, second = Call(), Call()
        provider.enqueue(first, second)

        async def coordinator_moves_on() -> None:
            first.release.set()
            with anyio.fail_after(3):
                await second.started.wait()  # step 1 completed and step 2 started meanwhile

        async with manager(shared, provider) as a:
            goal = await a.create("one\ntwo", model="fake")
            with anyio.fail_after(3):
                await first.started.wait()
            shared.store.before["goal.cancelled"] = coordinator_moves_on
            async with manager(shared) as b:
                with anyio.fail_after(3):
                    cancelled = await b.cancel(goal.id)
            assert cancelled.status == "cancelled"
            assert shared.store.conflicts == 1  # the race did happen
            types = [e.type for e in await shared.store.read_events(goal.id)]
            assert types[-3:] == ["goal.step_completed", "goal.step_started", "goal.cancelled"]
            with anyio.fail_after(3):
                await second.stopped.wait()  # A's call stops once its lease is gone


class TestStoredMeansPublished:
    """A commit that reached storage is published even if its task is cancelled meanwhile."""

    async def test_remote_cancel_during_a_slow_write(self) -> None:
        """B cancels while A's step_completed write is returning: A's sink still gets the event."""
        shared, recorder = Shared(), EventRecorder()
        written, returned = anyio.Event(), anyio.Event()

        async def slow_return() -> None:
            written.set()
            with anyio.move_on_after(5):
                await returned.wait()

        shared.store.after["goal.step_completed"] = slow_return
        provider = QueueProvider("fake")
        provider.enqueue("done", Call())  # step 2 waits, so the goal is still running
        async with manager(shared, provider, recorder, lease_ttl=1.5) as a:
            goal = await a.create("one\ntwo", model="fake")
            with anyio.fail_after(3):
                await written.wait()
            async with manager(shared) as b:
                await b.cancel(goal.id)
            with anyio.fail_after(3):
                await shared.store.lease_lost.wait()  # A's heartbeat stops the coordinator
            returned.set()
            await until_stopped(a, goal.id)
        stored = await shared.store.read_events(goal.id)
        # Step 1 completed in one write with step 2's start: A's sink has both.
        ours = [e.id for e in stored if e.type != "goal.cancelled"]
        assert [e.type for e in stored][-3:] == [
            "goal.step_completed",
            "goal.step_started",
            "goal.cancelled",
        ]
        assert [e.id for e in recorder.of(goal.id)] == ours

    async def test_exit_during_a_slow_write(self) -> None:
        """Leaving the manager while a commit is returning: the sinks still get its event."""
        shared, recorder = Shared(), EventRecorder()
        written = anyio.Event()

        async def slow_return() -> None:
            written.set()
            await anyio.sleep(0.2)

        shared.store.after["goal.step_completed"] = slow_return
        provider = QueueProvider("fake")
        provider.enqueue("done", Call())
        async with manager(shared, provider, recorder) as a:
            goal = await a.create("one\ntwo", model="fake")
            with anyio.fail_after(3):
                await written.wait()
        stored = await shared.store.read_events(goal.id)
        assert "goal.step_completed" in [e.type for e in stored]
        assert recorder.of(goal.id) == stored


class TestPublicationOrder:
    """Sinks see each goal's events in id order when a cancel and the coordinator commit at once."""

    async def test_cancel_during_a_slow_coordinator_commit(self) -> None:
        """The cancel's event is not published before the coordinator's earlier one."""
        shared, recorder, provider = Shared(), EventRecorder(), QueueProvider("fake")
        provider.enqueue("done", Call())
        written, cancel_arrived = anyio.Event(), anyio.Event()

        async def slow_return() -> None:
            written.set()
            with anyio.move_on_after(0.5):  # until the cancel writes, if it can meanwhile
                await cancel_arrived.wait()

        async def arrive() -> None:
            cancel_arrived.set()

        shared.store.after["goal.step_completed"] = slow_return
        shared.store.before["goal.cancelled"] = arrive
        async with manager(shared, provider, recorder) as mgr:
            goal = await mgr.create("one\ntwo", model="fake")
            with anyio.fail_after(3):
                await written.wait()
                cancelled = await mgr.cancel(goal.id)
            assert cancelled.status == "cancelled"
        stored = await shared.store.read_events(goal.id)
        seen = [e.id for e in recorder.of(goal.id)]
        assert seen == [e.id for e in stored], f"published out of order: {seen}"


class TestCooldownAfterLeaseLoss:
    """A manager that stopped a goal for want of renewals leaves it to others for a lease."""

    TTL = 1.0

    async def test_other_manager_gets_the_goal(self) -> None:
        """A's renewals fail: once its lease runs out, B takes the goal and A does not retake it."""
        shared, stuck = Shared(), QueueProvider("fake")
        calls = [Call(), Call()]
        stuck.enqueue(*calls)
        async with manager(shared, stuck, lease_ttl=self.TTL) as a:
            shared.store.failing_renewals.add(a.owner_id)
            goal = await a.create("stuck", model="fake", mode="direct")
            with anyio.fail_after(3):
                await calls[0].stopped.wait()  # stopped at A's own view of its lease
            await anyio.sleep(self.TTL / 2)  # the stored lease has expired by now
            async with manager(shared, QueueProvider("fake"), lease_ttl=self.TTL) as b:
                done = await b.wait(goal.id, timeout=3)
            assert not calls[1].started.is_set(), "A took the goal back straight away"
            assert done.status == "completed"
            assert done.result == "stuck: ok"


class TestHeartbeatStopsLostGoals:
    """The heartbeat cancels the provider call of a goal whose lease is gone."""

    async def test_stolen_lease_stops_the_call(self) -> None:
        """Another owner takes the lease in storage: A's call stops within a heartbeat or two."""
        shared, provider, call = Shared(), QueueProvider("fake"), Call()
        provider.enqueue(call)
        async with manager(shared, provider, lease_ttl=30) as a:
            goal = await a.create("x", model="fake", mode="direct")
            with anyio.fail_after(3):
                await call.started.wait()
            store = shared.store
            await store.release_leases(a.owner_id, [goal.id])
            assert [g.id for g in await store.claim_goals("thief", ttl=30, limit=1)] == [goal.id]
            with anyio.fail_after(3):
                await call.stopped.wait()
            await until_stopped(a, goal.id)
        types = [e.type for e in await store.read_events(goal.id)]
        assert types[-1] == "goal.step_started"  # A wrote nothing after losing the lease

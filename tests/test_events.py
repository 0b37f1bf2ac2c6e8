"""Event delivery: replay then live for subscribers, and isolated event sinks."""

from __future__ import annotations

import gc
import logging
from collections import defaultdict
from collections.abc import Awaitable, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

import goalkit
import goalkit.manager
from goalkit import GoalManager, GoalNotFound, InvalidGoal
from goalkit.models import Event, Goal, Step
from goalkit.testing import EventRecorder, QueueProvider

pytestmark = pytest.mark.anyio


class GatedProvider:
    """A provider plugin: steps listed in `gated` wait for the test to open their gate."""

    def __init__(self, model: str = "gated", *, gated: Sequence[int] = ()) -> None:
        self.model = model
        self.gated = set(gated)
        self.started: defaultdict[tuple[str, int], anyio.Event] = defaultdict(anyio.Event)
        self.gates: defaultdict[tuple[str, int], anyio.Event] = defaultdict(anyio.Event)

    @goalkit.hookimpl
    def goalkit_model_provider(self, model: str) -> GatedProvider | None:
        return self if model == self.model else None

    async def plan(self, goal: Goal, max_steps: int) -> list[str]:
        return [line for line in goal.description.splitlines() if line]

    async def run_step(self, goal: Goal, step: Step, previous: Sequence[Step]) -> str:
        self.started[goal.id, step.index].set()
        if step.index in self.gated:
            await self.gates[goal.id, step.index].wait()
        else:
            await anyio.lowlevel.checkpoint()
        return f"result {step.index}"


def manager_for(*plugins: object, **options: object) -> GoalManager:
    options.setdefault("retry_backoff", 0)
    return GoalManager("memory://", plugins=plugins, entry_points=False, **options)  # type: ignore[arg-type]


def steps(n: int) -> str:
    return "\n".join(f"step {i}" for i in range(1, n + 1))


async def collect(manager: GoalManager, goal_id: str, after: int = 0) -> list[Event]:
    return [event async for event in manager.events(goal_id, after=after)]


class TestReplayThenLive:
    """`events(after=N)` replays the stored events above N, then follows live ones."""

    async def test_replays_above_after_then_follows_live_to_the_terminal_event(self) -> None:
        """Events 3–5 are replayed; 6 and 7 arrive live; the iteration then ends."""
        provider = GatedProvider(gated=[2])
        async with manager_for(provider) as manager:
            goal = await manager.create(steps(2), model="gated")
            await provider.started[goal.id, 2].wait()
            # Stored so far: created, decomposed, started 1, completed 1, started 2.
            assert (await manager.get(goal.id)).last_event_id == 5

            received: list[Event] = []
            replayed = anyio.Event()
            ended = anyio.Event()

            async def follow() -> None:
                async for event in manager.events(goal.id, after=2):
                    received.append(event)
                    if len(received) == 3:
                        replayed.set()
                ended.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                await replayed.wait()
                assert [e.id for e in received] == [3, 4, 5]
                assert not ended.is_set()
                provider.gates[goal.id, 2].set()
            stored = await collect(manager, goal.id)
        assert [e.id for e in received] == [3, 4, 5, 6, 7]
        assert received == stored[2:]
        assert received[-1].type == "goal.completed"

    async def test_two_concurrent_subscribers_get_every_event_once_in_order(self) -> None:
        """Both subscribers see 1..n exactly, whichever mix of replay and live they got."""
        provider = GatedProvider(gated=[1])
        async with manager_for(provider) as manager:
            goal = await manager.create(steps(20), model="gated", max_steps=20)
            results: dict[str, list[int]] = {}

            async def follow(name: str) -> None:
                results[name] = [e.id for e in await collect(manager, goal.id)]

            async with anyio.create_task_group() as tg:
                tg.start_soon(follow, "first")
                tg.start_soon(follow, "second")
                await provider.started[goal.id, 1].wait()
                provider.gates[goal.id, 1].set()
            final = await manager.get(goal.id)
        expected = list(range(1, final.last_event_id + 1))
        assert final.last_event_id == 2 * 20 + 3
        assert results == {"first": expected, "second": expected}

    async def test_subscribers_joining_mid_run_see_no_duplicates_and_no_gaps(self) -> None:
        """A subscriber started after each event of a running goal still gets 1..n exactly."""
        provider = GatedProvider()
        async with manager_for(provider) as manager:
            goal = await manager.create(steps(15), model="gated", max_steps=15)
            late: list[list[int]] = []

            async def follow() -> None:
                late.append([e.id for e in await collect(manager, goal.id)])

            async with anyio.create_task_group() as tg:
                # Each new event starts one more subscriber, while the goal keeps running.
                async for _event in manager.events(goal.id):
                    tg.start_soon(follow)
            final = await manager.get(goal.id)
        expected = list(range(1, final.last_event_id + 1))
        assert len(late) == final.last_event_id
        assert all(ids == expected for ids in late)

    async def test_a_subscriber_that_reads_slowly_misses_nothing(self) -> None:
        """A reader that stalls while hundreds of events are published still gets all in order."""
        provider = QueueProvider()
        provider.enqueue(*([RuntimeError("again"), RuntimeError("again"), "ok"] * 100))
        async with manager_for(provider, max_retries=2) as manager:
            goal = await manager.create(steps(100), model="fake", max_steps=100)
            ids: list[int] = []
            async for event in manager.events(goal.id):
                ids.append(event.id)
                if event.id == 2:
                    # Stall until the goal has finished: far more events than an inbox holds.
                    await manager.wait(goal.id)
            final = await manager.get(goal.id)
        assert final.status == "completed"
        assert final.last_event_id == 3 + 100 * 6
        assert ids == list(range(1, final.last_event_id + 1))

    async def test_after_at_or_past_the_end_of_an_ended_goal_yields_nothing(self) -> None:
        """A finished goal read from its last event (or beyond) ends at once."""
        async with manager_for(QueueProvider()) as manager:
            goal = await manager.wait((await manager.create(steps(2), model="fake")).id)
            with anyio.fail_after(5):
                assert await collect(manager, goal.id, after=goal.last_event_id) == []
                assert await collect(manager, goal.id, after=goal.last_event_id + 100) == []
                tail = await collect(manager, goal.id, after=goal.last_event_id - 1)
        assert [e.type for e in tail] == ["goal.completed"]

    async def test_after_past_the_end_of_a_running_goal_still_ends_with_the_goal(self) -> None:
        """A reader asking for events beyond the log (a bogus Last-Event-ID) is not left hanging.

        Nothing is numbered above `after`, so nothing is yielded (or the value is refused as
        invalid); either way the iteration must end once the goal has ended.
        """
        provider = GatedProvider(gated=[1])
        async with manager_for(provider) as manager:
            goal = await manager.create(steps(1), model="gated")
            await provider.started[goal.id, 1].wait()
            received: list[Event] | None = None

            async def follow() -> None:
                nonlocal received
                try:
                    received = await collect(manager, goal.id, after=50)
                except InvalidGoal:
                    received = []

            with anyio.fail_after(3):  # a guard against a hang, not a timing assertion
                async with anyio.create_task_group() as tg:
                    tg.start_soon(follow)
                    provider.gates[goal.id, 1].set()
                    assert (await manager.wait(goal.id)).status == "completed"
        assert received == []

    @pytest.mark.parametrize("after", [-1, True, "3", 1.5, None])
    async def test_invalid_after_is_invalid_goal(self, after: object) -> None:
        """`after` must be an integer ≥ 0; InvalidGoal names it."""
        async with manager_for(QueueProvider()) as manager:
            goal = await manager.create("x", model="fake")
            with pytest.raises(InvalidGoal) as info:
                await collect(manager, goal.id, after=after)  # type: ignore[arg-type]
            await manager.wait(goal.id)
        assert info.value.field == "after"

    async def test_events_of_an_unknown_goal_is_not_found(self) -> None:
        """Subscribing to an unknown goal raises GoalNotFound."""
        async with manager_for() as manager:
            with pytest.raises(GoalNotFound):
                await collect(manager, "goal-0000000000000000")


class TestSubscriptionCleanup:
    """Leaving an event stream early releases its subscription."""

    async def test_closed_streams_leave_no_subscription(self) -> None:
        """Many streams left early (closed with aclosing) leave no subscription behind."""
        provider = GatedProvider(gated=[1])
        async with manager_for(provider) as manager:
            goal = await manager.create(steps(1), model="gated")
            for _ in range(100):
                async with aclosing(manager.events(goal.id)) as stream:
                    async for _event in stream:
                        break
            # No public way to count live subscriptions exists: this reads the private bus.
            assert manager._bus.subscriptions == 0
            provider.gates[goal.id, 1].set()
            await manager.wait(goal.id)

    async def test_breaking_out_of_the_loop_releases_the_subscription(self) -> None:
        """`break` out of `async for event in manager.events(...)` leaves no subscription.

        Users write the plain loop (the README does); an async generator that is only
        finalized later keeps its subscription (and, on trio, warns) until then.
        """
        provider = GatedProvider(gated=[1])
        async with manager_for(provider) as manager:
            goal = await manager.create(steps(1), model="gated")
            for _ in range(100):
                async for _event in manager.events(goal.id):
                    break
            gc.collect()
            # No public way to count live subscriptions exists: this reads the private bus.
            assert manager._bus.subscriptions == 0
            provider.gates[goal.id, 1].set()
            await manager.wait(goal.id)


class Sink:
    """An event sink plugin as an author writes it: an object with a hookimpl method."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @goalkit.hookimpl
    def goalkit_event(self, event: Event) -> None:
        self.events.append(event)


class FailingSink:
    """A sink that raises on every event."""

    def __init__(self) -> None:
        self.calls = 0

    @goalkit.hookimpl
    def goalkit_event(self, event: Event) -> None:
        self.calls += 1
        raise RuntimeError(f"sink broke on {event.type}")


class SlowSink:
    """An async sink that takes its time over every event."""

    def __init__(self, pause: float) -> None:
        self.pause = pause
        self.events: list[Event] = []

    @goalkit.hookimpl
    async def goalkit_event(self, event: Event) -> None:
        await anyio.sleep(self.pause)
        self.events.append(event)


class AwaitableSink:
    """A sync hook implementation that returns an awaitable, which goalkit must await."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def _record(self, event: Event) -> None:
        await anyio.lowlevel.checkpoint()
        self.events.append(event)

    @goalkit.hookimpl
    def goalkit_event(self, event: Event) -> Awaitable[None]:
        return self._record(event)


def by_goal(events: list[Event]) -> dict[str, list[Event]]:
    grouped: defaultdict[str, list[Event]] = defaultdict(list)
    for event in events:
        grouped[event.goal_id].append(event)
    return dict(grouped)


class TestSinks:
    """Every `goalkit_event` sink sees each event once, in order per goal, in isolation."""

    async def test_every_sink_sees_every_event_once_in_order_per_goal(self) -> None:
        """Three kinds of sink, twenty goals at once: each sink gets each goal's log exactly."""
        sinks = [Sink(), AwaitableSink(), EventRecorder()]
        async with manager_for(GatedProvider(), *sinks) as manager:
            goals = [await manager.create(steps(3), model="gated") for _ in range(20)]
            stored = {g.id: await collect(manager, g.id) for g in goals}
        assert all(len(log) == 2 * 3 + 3 for log in stored.values())
        for sink in sinks:
            assert by_goal(sink.events) == stored

    async def test_a_failing_sink_is_logged_and_breaks_nothing(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A sink that raises is logged; the goal completes and other sinks get everything."""
        failing, healthy = FailingSink(), Sink()
        caplog.set_level(logging.ERROR, logger="goalkit")
        async with manager_for(QueueProvider(), failing, healthy) as manager:
            goal = await manager.wait((await manager.create(steps(2), model="fake")).id)
            stored = await collect(manager, goal.id)
        assert goal.status == "completed"
        assert healthy.events == stored
        assert failing.calls == len(stored)
        failures = [r for r in caplog.records if "event sink" in r.getMessage()]
        assert len(failures) == len(stored)
        assert all(r.levelno == logging.ERROR and r.exc_info for r in failures)
        assert "goal.created" in failures[0].getMessage()
        assert "sink broke on goal.created" in str(failures[0].exc_info[1])  # type: ignore[index]

    async def test_a_slow_sink_does_not_slow_the_workflow(self) -> None:
        """The goal completes while a slow sink is behind; exiting drains it completely."""
        slow, fast = SlowSink(pause=0.05), Sink()
        async with manager_for(QueueProvider(), slow, fast) as manager:
            goal = await manager.wait((await manager.create(steps(3), model="fake")).id)
            stored = await collect(manager, goal.id)
            assert goal.status == "completed"
            assert len(slow.events) < len(stored)
        # Leaving the manager waits (within the grace period) for queued events to drain.
        assert slow.events == stored
        assert fast.events == stored

    async def test_a_sink_that_never_catches_up_is_cut_off_at_exit(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A sink still busy when the grace period ends is cancelled instead of hanging exit."""
        monkeypatch.setattr(goalkit.manager, "SINK_DRAIN_SECONDS", 0.1)
        stuck = SlowSink(pause=60)
        with anyio.fail_after(10):  # a guard against a hang, not a timing assertion
            async with manager_for(QueueProvider(), stuck) as manager:
                goal = await manager.wait((await manager.create("x", model="fake")).id)
        assert goal.status == "completed"
        assert stuck.events == []


class CountedReads:
    """A storage plugin serving ``counted+sqlite:///…``: SQLite, with its reads counted."""

    PREFIX = "counted+sqlite:///"

    def __init__(self) -> None:
        self.reads = 0

    @goalkit.hookimpl
    def goalkit_storage(self, url: str) -> object | None:
        from goalkit.storage.sqlite import SQLiteStorage

        if not url.startswith(self.PREFIX):
            return None
        plugin = self
        inner = SQLiteStorage(url.removeprefix(self.PREFIX))

        class Counted:
            def __getattr__(self, name: str) -> object:
                attr = getattr(inner, name)
                if name not in ("get_goal", "read_events"):
                    return attr

                async def counted(*args: object, **kwargs: object) -> object:
                    plugin.reads += 1
                    return await attr(*args, **kwargs)

                return counted

        return Counted()


class Followers:
    """`n` tasks each following a goal's events to the end, as SSE clients would."""

    def __init__(self, manager: GoalManager, goal_id: str, n: int) -> None:
        self.manager, self.goal_id, self.n = manager, goal_id, n
        self.received: list[list[Event]] = [[] for _ in range(n)]
        self.waiting = 0  # followers that have read up to the step that is running
        self.all_waiting = anyio.Event()

    async def follow(self, i: int) -> None:
        async for event in self.manager.events(self.goal_id):
            self.received[i].append(event)
            if event.type == "goal.step_started" and len(self.received[i]) == 3:
                self.waiting += 1
                if self.waiting == self.n:
                    self.all_waiting.set()

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        for i in range(self.n):
            tg.start_soon(self.follow, i)


class TestIdleStreams:
    """Idle streams wait on the manager's notifications; they do not each poll storage."""

    POLL = 0.02

    async def test_streams_of_a_goal_driven_here_read_nothing_while_idle(
        self, tmp_path: Path
    ) -> None:
        counter, provider = CountedReads(), GatedProvider(gated=[1])
        url = f"{CountedReads.PREFIX}{tmp_path}/g.db"
        async with GoalManager(
            url, plugins=[counter, provider], entry_points=False, poll_interval=self.POLL
        ) as manager:
            goal = await manager.create(steps(1), model="gated")
            followers = Followers(manager, goal.id, 20)
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    followers.start(tg)
                    await followers.all_waiting.wait()
                    counter.reads = 0
                    await anyio.sleep(self.POLL * 10)
                    # At most the one read each stream makes to find the end of the log,
                    # however many polls went by.
                    assert counter.reads <= followers.n
                    provider.gates[goal.id, 1].set()
        for received in followers.received:
            assert [e.id for e in received] == list(range(1, 6))
            assert [e.type for e in received][-2:] == ["goal.step_completed", "goal.completed"]

    async def test_events_stored_by_another_process_arrive_with_one_read_per_goal(
        self, tmp_path: Path
    ) -> None:
        """Manager A drives the goal; B's ten streams of it cost B one look per poll."""
        counter, provider = CountedReads(), GatedProvider(gated=[1, 2])
        url = f"{CountedReads.PREFIX}{tmp_path}/g.db"
        options: dict[str, Any] = {"entry_points": False, "poll_interval": self.POLL}
        async with GoalManager(url, plugins=[CountedReads(), provider], **options) as a:
            goal = await a.create(steps(2), model="gated")
            await provider.started[goal.id, 1].wait()
            async with GoalManager(url, plugins=[counter, provider], **options) as b:
                followers = Followers(b, goal.id, 10)
                with anyio.fail_after(10):
                    async with anyio.create_task_group() as tg:
                        followers.start(tg)
                        await followers.all_waiting.wait()
                        counter.reads = 0
                        started = anyio.current_time()
                        await anyio.sleep(self.POLL * 10)
                        looks = (anyio.current_time() - started) / self.POLL
                        # One look per poll for the goal, not one per stream (plus the read
                        # each stream makes to find the end of the log).
                        assert counter.reads <= followers.n + looks + 2
                        provider.gates[goal.id, 1].set()
                        provider.gates[goal.id, 2].set()
                assert goal.id not in b.running
        for received in followers.received:
            assert [e.id for e in received] == list(range(1, 8))
            assert [e.type for e in received][3:] == [
                "goal.step_completed",
                "goal.step_started",
                "goal.step_completed",
                "goal.completed",
            ]

    async def test_a_stream_open_when_the_manager_closes_raises(self) -> None:
        provider = GatedProvider(gated=[1])
        async with manager_for(provider) as manager:
            goal = await manager.create(steps(1), model="gated")
            stream = manager.events(goal.id)
            assert (await stream.__anext__()).type == "goal.created"
            await provider.started[goal.id, 1].wait()
        with anyio.fail_after(5), pytest.raises(RuntimeError, match="GoalManager closed"):
            async for _ in stream:
                pass

"""The engine: a coordinator per goal, and the bus that fans stored events out.

`Coordinator` drives one goal through ``created → decomposing → running → completed | failed``
by asking its provider for a plan and then for each step, committing every move through
`goalkit.transitions`. It knows the storage and provider protocols, never a backend, and it
never publishes an event itself: the manager's `commit` stores, then publishes.

`EventBus` hands each published event to the in-process subscribers of its goal (bounded
inboxes: a subscriber that falls behind reads the gap back from storage, so a slow reader
costs memory of its own only) and to every event sink (one unbounded queue and one task per
sink, so a slow or failing sink delays nobody else).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from functools import partial

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from goalkit import transitions
from goalkit.errors import GoalNotFound, ProviderError
from goalkit.models import JSON, ErrorInfo, Event, Goal, Step, StepSpec, check_json, validate_plan
from goalkit.plugins import resolve
from goalkit.providers import ModelProvider
from goalkit.retry import RetryPolicy, will_retry
from goalkit.storage import Storage

__all__ = ["Coordinator", "EventBus", "EventStream", "Inbox"]

log = logging.getLogger("goalkit")

Commit = Callable[[transitions.Transition], Awaitable[Event | None]]

INBOX_SIZE = 256
"""Events buffered per live subscriber before it falls back to reading storage."""


def now() -> int:
    """Whole Unix seconds, the resolution of every `*_at` field."""
    return int(time.time())


def describe(exc: BaseException) -> str:
    """A one-line account of an exception for an `ErrorInfo` message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class EventBus:
    """In-process delivery of stored events to subscribers and sinks."""

    def __init__(self) -> None:
        self._inboxes: dict[str, set[MemoryObjectSendStream[Event]]] = {}
        self._sinks: list[MemoryObjectSendStream[Event]] = []
        self._enders: dict[str, set[anyio.Event]] = {}

    def subscribe(self, goal_id: str) -> Inbox:
        """An inbox of the events published for `goal_id` from now on, until it is closed."""
        send, receive = anyio.create_memory_object_stream[Event](INBOX_SIZE)
        self._inboxes.setdefault(goal_id, set()).add(send)
        return Inbox(self, goal_id, send, receive)

    def _unsubscribe(self, goal_id: str, send: MemoryObjectSendStream[Event]) -> None:
        inboxes = self._inboxes.get(goal_id)
        if inboxes is not None:
            inboxes.discard(send)
            if not inboxes:
                del self._inboxes[goal_id]

    def watch_end(self, goal_id: str) -> anyio.Event:
        """An event set when the terminal event of `goal_id` is published; `unwatch_end` it."""
        ended = anyio.Event()
        self._enders.setdefault(goal_id, set()).add(ended)
        return ended

    def unwatch_end(self, goal_id: str, ended: anyio.Event) -> None:
        watchers = self._enders.get(goal_id)
        if watchers is not None:
            watchers.discard(ended)
            if not watchers:
                del self._enders[goal_id]

    @property
    def subscriptions(self) -> int:
        """How many live subscriptions and end watchers exist (for leak checks)."""
        return sum(len(s) for s in self._inboxes.values()) + sum(
            len(s) for s in self._enders.values()
        )

    def add_sink(self) -> MemoryObjectReceiveStream[Event]:
        """A queue that will receive every published event, in publication order."""
        send, receive = anyio.create_memory_object_stream[Event](math.inf)
        self._sinks.append(send)
        return receive

    def close_sinks(self) -> None:
        """No more events: sink tasks finish once their queues are drained."""
        for send in self._sinks:
            send.close()
        self._sinks.clear()

    def publish(self, event: Event) -> None:
        """Hand a stored event to everyone; never blocks, never raises."""
        if event.terminal:
            for ended in self._enders.pop(event.goal_id, ()):
                ended.set()
        for send in list(self._inboxes.get(event.goal_id, ())):
            # A full inbox drops the event: its subscriber notices the gap and reads storage.
            with suppress(anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                send.send_nowait(event)
        for send in self._sinks:
            try:
                send.send_nowait(event)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                log.error(
                    "event sink queue is gone; %s #%d not delivered to it", event.type, event.id
                )


async def run_sink(
    name: str, call: Callable[..., object], queue: MemoryObjectReceiveStream[Event]
) -> None:
    """Feed one `goalkit_event` implementation from its queue, logging its failures."""
    # A synchronous sink runs in a worker thread, so one that blocks (a webhook through a
    # sync HTTP client) stalls only its own queue, never the event loop.
    blocking = not inspect.iscoroutinefunction(call)
    async with queue:
        async for event in queue:
            try:
                if blocking:
                    answer = await anyio.to_thread.run_sync(partial(call, event=event))
                else:
                    answer = call(event=event)
                await resolve(answer)
            except Exception:
                log.exception(
                    "event sink %s failed on %s #%d of %s",
                    name,
                    event.type,
                    event.id,
                    event.goal_id,
                )


@attrs.define(eq=False)
class Inbox:
    """One subscription to the live events of a goal; `close` ends it (idempotent, sync)."""

    bus: EventBus
    goal_id: str
    send: MemoryObjectSendStream[Event]
    receive: MemoryObjectReceiveStream[Event]

    def close(self) -> None:
        self.bus._unsubscribe(self.goal_id, self.send)
        self.send.close()
        self.receive.close()

    async def take(self, within: float) -> list[Event]:
        """Events published since the last call, waiting up to `within` seconds for one."""
        events: list[Event] = []
        with anyio.move_on_after(within):
            events.append(await self.receive.receive())
        while True:
            try:
                events.append(self.receive.receive_nowait())
            except anyio.WouldBlock:
                return events


class EventStream:
    """The events of one goal after a given number: the stored ones, then live ones.

    What `GoalManager.events` returns; use it with ``async for`` (optionally inside
    ``async with``). Each event comes exactly once and in order, and iteration ends after the
    terminal event, or at once when the goal has ended and nothing is left after `after`.
    Storage is the source of truth: a live event that follows the last one directly is passed
    on as published, anything else (a gap, or a quiet `poll_interval`, which is how events
    written by other processes arrive) is read back from storage. The live subscription is
    released as soon as the stream ends, is closed, or is dropped (``break`` out of the loop).
    """

    def __init__(
        self, storage: Storage, bus: EventBus, goal_id: str, after: int, poll_interval: float
    ) -> None:
        self._storage = storage
        self._bus = bus
        self._goal_id = goal_id
        self._last = after
        self._poll = poll_interval
        self._goal: Goal | None = None
        self._inbox: Inbox | None = None
        self._buffer: deque[Event] = deque()
        self._ended = False
        self._read_storage = True

    def __aiter__(self) -> EventStream:
        return self

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """End the stream and release its subscription."""
        self._ended = True
        self._buffer.clear()
        if self._inbox is not None:
            self._inbox.close()
            self._inbox = None

    def __del__(self) -> None:
        self.close()

    async def __anext__(self) -> Event:
        while not self._buffer:
            if self._ended:
                raise StopAsyncIteration
            await self._fill()
        event = self._buffer.popleft()
        self._last = event.id
        if event.terminal:
            self.close()
        return event

    async def _fill(self) -> None:
        if self._goal is None:
            # Subscribe before the first read, so nothing published after it is missed: an
            # event the read does not show arrives in the inbox (or, from another process,
            # by the quiet-poll read below).
            self._inbox = self._bus.subscribe(self._goal_id)
            self._goal = await self._storage.get_goal(self._goal_id, steps=False)
            if self._goal is None:
                self.close()
                raise GoalNotFound(self._goal_id)
            # Nothing stored after `after` yet: skip the read, live events follow on.
            self._read_storage = self._goal.last_event_id > self._last or self._goal.done
        if self._read_storage:
            batch = await self._storage.read_events(self._goal_id, after=self._last)
            if batch:
                self._buffer.extend(batch)
                return
            if self._goal.done:
                self.close()  # it has ended and nothing is left after `after`
                return
        assert self._inbox is not None
        live = await self._inbox.take(self._poll)
        expected = self._last + 1
        # Storage is read again unless live events follow on without a gap.
        self._read_storage = True
        for event in live:
            if event.id < expected:
                if event.terminal:
                    self.close()  # `after` was past the end of the log
                    return
                continue
            if event.id != expected:
                break  # a gap: the next storage read fills it
            self._buffer.append(event)
            expected += 1
        else:
            self._read_storage = not self._buffer
        if not live:
            # Quiet: the goal may have ended in another process.
            self._goal = await self._storage.get_goal(self._goal_id, steps=False) or self._goal


@attrs.frozen
class Fault:
    """What a provider's exception says about retrying: never (`final`), or not before."""

    final: bool = False
    retry_after: float = 0.0

    @classmethod
    def of(cls, exc: Exception) -> Fault:
        if isinstance(exc, ProviderError):
            return cls(final=not exc.retryable, retry_after=exc.retry_after or 0.0)
        return cls()


class _GoalFailed(Exception):
    """Internal: the goal was failed (and that was committed); stop driving it."""


@attrs.define
class Coordinator:
    """Drives one leased goal to a terminal state, resuming wherever storage says it is."""

    goal: Goal
    provider: ModelProvider
    commit: Commit
    lease: str
    policy: RetryPolicy
    step_timeout: float | None

    async def _apply(self, transition: transitions.Transition) -> Goal:
        event = await self.commit(transition)
        goal = transition.goal
        if event is not None:
            goal = attrs.evolve(goal, last_event_id=event.id)
        self.goal = goal
        return goal

    async def run(self) -> None:
        """Plan if needed, run every step not yet completed, then complete the goal."""
        try:
            steps = list(self.goal.steps)
            if self.goal.phase in ("created", "decomposing"):
                steps = await self._decompose()
            failed = next((s for s in steps if s.status == "failed"), None)
            if failed is not None:
                # A crash fell between the step's final failure and the goal's: finish that.
                message = failed.error.message if failed.error else "no error recorded"
                await self._fail(
                    "step_failed",
                    f"step {failed.index} ({failed.title!r}) failed after "
                    f"{failed.attempts} attempt(s): {message}",
                )
            previous: list[Step] = [s for s in steps if s.status == "completed"]
            for step in steps:
                if step.status == "completed":
                    continue
                previous.append(await self._run_step(step, tuple(previous)))
            await self._apply(
                transitions.complete(self.goal, previous[-1].result, now(), lease=self.lease)
            )
        except _GoalFailed:
            pass

    async def _fail(self, code: str, message: str) -> None:
        await self._apply(
            transitions.fail(self.goal, ErrorInfo(code, message), now(), lease=self.lease)
        )
        raise _GoalFailed

    async def _decompose(self) -> list[Step]:
        # Always a fenced write before `plan`: a goal cancelled while it was being claimed
        # (or resumed) gets no provider call at all.
        goal = await self._apply(transitions.decomposing(self.goal, now(), lease=self.lease))
        if goal.mode == "direct":
            plan: tuple[StepSpec, ...] = (
                StepSpec(title=goal.description[:200], description=goal.description),
            )
        else:
            plan = await self._plan()
        transition = transitions.decomposed(self.goal, plan, now(), lease=self.lease)
        await self._apply(transition)
        return list(transition.steps)

    async def _plan(self) -> tuple[StepSpec, ...]:
        attempt = 0
        while True:
            attempt += 1
            answer: object = None
            fault = Fault()
            try:
                with anyio.move_on_after(self.step_timeout) as scope:
                    answer = await self.provider.plan(self.goal, self.goal.max_steps)
            except Exception as exc:
                fault = Fault.of(exc)
                error = ErrorInfo("plan_failed", describe(exc))
            else:
                if scope.cancelled_caught:
                    error = ErrorInfo(
                        "plan_timeout", f"planning timed out after {self.step_timeout}s"
                    )
                else:
                    try:
                        return validate_plan(answer, self.goal.max_steps)
                    except ValueError as exc:
                        error = ErrorInfo("invalid_plan", str(exc))
            if fault.final or not will_retry(attempt, self.goal.max_retries):
                await self._fail(
                    error.code, f"planning failed after {attempt} attempt(s): {error.message}"
                )
            log.warning(
                "goal %s: planning attempt %d failed: %s", self.goal.id, attempt, error.message
            )
            await anyio.sleep(max(self.policy.delay(attempt), fault.retry_after))

    async def _run_step(self, step: Step, previous: tuple[Step, ...]) -> Step:
        while True:
            transition = transitions.step_started(self.goal, step, now(), lease=self.lease)
            step = transition.steps[0]
            await self._apply(transition)
            error: ErrorInfo | None = None
            result: JSON = None
            fault = Fault()
            try:
                # move_on_after, not fail_after: a TimeoutError the provider raises itself
                # (a socket timeout) is a step error, not our step_timeout.
                with anyio.move_on_after(self.step_timeout) as scope:
                    result = await self.provider.run_step(self.goal, step, previous)
                if scope.cancelled_caught:
                    error = ErrorInfo("step_timeout", f"step timed out after {self.step_timeout}s")
                else:
                    check_json(result)
            except Exception as exc:
                fault = Fault.of(exc)
                error = ErrorInfo("step_error", describe(exc))
            if error is None:
                transition = transitions.step_completed(
                    self.goal, step, result, now(), lease=self.lease
                )
                await self._apply(transition)
                return transition.steps[0]
            retry = not fault.final and will_retry(step.attempts, self.goal.max_retries)
            transition = transitions.step_failed(
                self.goal, step, error, retry, now(), lease=self.lease
            )
            step = transition.steps[0]
            await self._apply(transition)
            if not retry:
                await self._fail(
                    "step_failed",
                    f"step {step.index} ({step.title!r}) failed after {step.attempts} attempt(s): {error.message}",
                )
            await anyio.sleep(max(self.policy.delay(step.attempts), fault.retry_after))

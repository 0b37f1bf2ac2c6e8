"""The engine: a coordinator per goal, and the bus that fans stored events out.

`Coordinator` drives one goal through ``created → decomposing → running → completed | failed``
by asking its provider for a plan and then for each step, committing every move through
`goalkit.transitions`. It knows the storage and provider protocols, never a backend, and it
never publishes an event itself: the manager's `commit` stores, then publishes.

`EventBus` hands each published event to the in-process subscribers of its goal (bounded
inboxes: a subscriber that falls behind reads the gap back from storage, so a slow reader
costs memory of its own only) and to every event sink (one unbounded queue and one task per
sink, so a slow or failing sink delays nobody else). Subscribers wait on their inbox only,
never on a timer: events that other processes store reach them through the manager, which
looks at storage once per poll for each goal followed here (`EventBus.publish_live`).
Live-only events (``goal.step_delta``, streamed text, `id` 0) go to subscribers only: they
are never stored, so sinks, whose contract is "after it is stored", never see them.

Token budgets are enforced here, around every provider call (planning attempts included):
no call is made once the goal's usage has reached `max_tokens`, and a call whose reported
usage takes the goal past it fails the goal (`budget_exceeded`) instead of being used.
"""

from __future__ import annotations

import inspect
import itertools
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
from goalkit.models import (
    JSON,
    NO_USAGE,
    STEP_DELTA,
    Answer,
    ErrorInfo,
    Event,
    Goal,
    Step,
    StepSpec,
    Usage,
    check_json,
    validate_plan,
)
from goalkit.plugins import resolve
from goalkit.providers import ModelProvider, StreamingProvider
from goalkit.retry import RetryPolicy, will_retry
from goalkit.storage import Storage

__all__ = ["Coordinator", "EventBus", "EventStream", "Inbox"]

log = logging.getLogger("goalkit")

Commit = Callable[[transitions.Transition], Awaitable[tuple[Event, ...]]]

INBOX_SIZE = 256
"""Events buffered per live subscriber before it falls back to reading storage."""
READ_BATCH = 1000
"""Events an `EventStream` reads from storage at a time."""


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

    def watched(self) -> set[str]:
        """The ids of the goals that have live subscribers."""
        return set(self._inboxes)

    def close_inboxes(self) -> None:
        """End every subscription (the manager is closing); their streams raise."""
        for sends in self._inboxes.values():
            for send in sends:
                send.close()

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
        self.publish_live(event)
        for send in self._sinks:
            try:
                send.send_nowait(event)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                log.error(
                    "event sink queue is gone; %s #%d not delivered to it", event.type, event.id
                )

    def publish_live(self, event: Event) -> None:
        """Hand an event to the live subscribers of its goal only; never blocks, never raises.

        What `publish` does for subscribers; alone, for live-only events and for events
        another process stored (its own sinks had them).
        """
        for send in list(self._inboxes.get(event.goal_id, ())):
            # A full inbox drops the event: its subscriber notices the gap (or the full
            # inbox) and reads storage (a dropped live-only event is simply lost: the step's
            # result holds its text).
            with suppress(anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                send.send_nowait(event)


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
            except (anyio.WouldBlock, anyio.EndOfStream):
                return events


class EventStream:
    """The events of one goal after a given number: the stored ones, then live ones.

    What `GoalManager.events` returns; use it with ``async for`` (optionally inside
    ``async with``). Each event comes exactly once and in order, and iteration ends after the
    terminal event, or at once when the goal has ended and nothing is left after `after`.
    Storage is the source of truth: a live event that follows the last one directly is passed
    on as published, anything else (a gap, or an inbox that was full, so events may have been
    dropped) is read back from storage. While idle the stream waits on its inbox and costs
    no storage reads: events written by other processes are brought to the inbox by the
    manager (one look per goal, not per stream). The live subscription is released as soon
    as the stream ends, is closed, or is dropped (``break`` out of the loop). If the manager
    closes first, the stream raises `RuntimeError`.

    With the manager's ``live_output`` on, live-only ``goal.step_delta`` events (`id` 0) come
    too, between the stored events they belong to: each is passed on only when it was
    published right after the stored event the stream handed out last (its ``data["after"]``),
    so a replay from storage never shows them, and one that comes late is dropped.
    """

    def __init__(self, storage: Storage, bus: EventBus, goal_id: str, after: int) -> None:
        self._storage = storage
        self._bus = bus
        self._goal_id = goal_id
        self._last = after
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
        if event.durable:
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
            batch = await self._storage.read_events(
                self._goal_id, after=self._last, limit=READ_BATCH
            )
            if batch:
                self._buffer.extend(batch)
                # What was published since subscribing is in the inbox, live-only events
                # included: go on from there (a gap or a full inbox sends us back here).
                # A full batch may have more behind it, and a goal that had ended when
                # first read publishes nothing more: read on from storage in both cases.
                self._read_storage = self._goal.done or len(batch) >= READ_BATCH
                return
            if self._goal.done:
                self.close()  # it has ended and nothing is left after `after`
                return
        assert self._inbox is not None
        try:
            live = await self._inbox.take(math.inf)
        except anyio.EndOfStream:
            self.close()
            raise RuntimeError(
                f"GoalManager closed while the events of goal {self._goal_id!r} were followed"
            ) from None
        expected = self._last + 1
        # Storage is read again unless live events follow on without a gap.
        self._read_storage = True
        for event in live:
            if not event.durable:
                if event.data.get("after") == expected - 1:
                    self._buffer.append(event)
                continue
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
            # A full inbox may have dropped what came after: read on from storage then.
            self._read_storage = not self._buffer or len(live) >= INBOX_SIZE


@attrs.frozen
class Fault:
    """What a provider's exception says about retrying: never (`final`), or not before."""

    final: bool = False
    retry_after: float = 0.0

    usage: Usage = NO_USAGE

    @classmethod
    def of(cls, exc: Exception) -> Fault:
        if isinstance(exc, ProviderError):
            usage = exc.usage if isinstance(exc.usage, Usage) else NO_USAGE
            return cls(final=not exc.retryable, retry_after=exc.retry_after or 0.0, usage=usage)
        return cls()


def unwrap(answer: object) -> tuple[object, Usage]:
    """A provider's answer as (value, usage): an `Answer` unpacked, anything else as is."""
    if isinstance(answer, Answer):
        return answer.value, answer.usage
    return answer, NO_USAGE


def exhausted(goal: Goal) -> bool:
    """True when the goal has a budget and its usage has reached it: no call may be made."""
    return goal.max_tokens is not None and goal.usage.total_tokens >= goal.max_tokens


def passes(goal: Goal, usage: Usage) -> bool:
    """True when adding `usage` to the goal's would take it past its budget."""
    return goal.max_tokens is not None and goal.usage.total_tokens + usage.total_tokens > (
        goal.max_tokens
    )


def _spent(goal: Goal) -> str:
    return f"{goal.usage.total_tokens} of max_tokens={goal.max_tokens} used"


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
    publish_delta: Callable[[Event], None] | None = None
    """Where streamed text goes (the bus's live-only delivery), or None: live output off."""
    max_recoveries: int = 3
    _deferred: transitions.Transition | None = attrs.field(default=None, init=False)

    async def _apply(self, transition: transitions.Transition) -> Goal:
        """Commit `transition`, after the write deferred by `_defer` if there is one."""
        if self._deferred is not None:
            transition = transitions.chain(self._deferred, transition)
            self._deferred = None
        events = await self.commit(transition)
        goal = transition.links()[-1].goal
        if events and events[-1].id != goal.last_event_id:
            # Storage numbers events; under our lease nobody else writes, so this is rare.
            goal = attrs.evolve(goal, last_event_id=events[-1].id)
        self.goal = goal
        return goal

    def _defer(self, transition: transitions.Transition) -> Goal:
        """Hold a write that needs no commit of its own: the next `_apply` chains it first.

        Used for the writes that are followed by another before anything happens outside
        (a step completed, then the next step started or the goal completed), so the two
        share one commit. Every path after a `_defer` reaches an `_apply` before a provider
        call or a sleep, so nothing outside ever waits on a write that is not stored.
        """
        assert self._deferred is None, "two writes deferred in a row"
        self._deferred = transition
        self.goal = transition.goal
        return self.goal

    async def run(self) -> None:
        """Plan if needed, run every step not yet completed, then complete the goal."""
        try:
            if self.goal.recoveries > self.max_recoveries:
                await self._abandon()
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

    async def _abandon(self) -> None:
        """Fail a poison goal: its runs keep dying, so resuming it again would crash-loop."""
        running = next((s for s in self.goal.steps if s.status == "running"), None)
        where = (
            f"in step {running.index} ({running.title!r}), attempt {running.attempts}"
            if running is not None
            else f"in phase {self.goal.phase!r}"
        )
        error = ErrorInfo(
            "crash_loop",
            f"the process running this goal stopped {self.goal.recoveries} times in a row "
            f"without completing a step (last {where}); max_recoveries is "
            f"{self.max_recoveries}, so it is not resumed again",
        )
        if running is not None:
            # The interrupted attempt ends as a failure, so no step is left `running`.
            await self._apply(
                transitions.step_failed(self.goal, running, error, False, now(), lease=self.lease)
            )
        await self._fail(error.code, error.message)

    async def _fail(self, code: str, message: str, usage: Usage = NO_USAGE) -> None:
        await self._apply(
            transitions.fail(
                self.goal, ErrorInfo(code, message), now(), lease=self.lease, usage=usage
            )
        )
        raise _GoalFailed

    async def _decompose(self) -> list[Step]:
        # Always a fenced write before `plan`: a goal cancelled while it was being claimed
        # (or resumed) gets no provider call at all.
        goal = await self._apply(transitions.decomposing(self.goal, now(), lease=self.lease))
        usage = NO_USAGE
        if goal.mode == "direct":
            plan: tuple[StepSpec, ...] = (
                StepSpec(title=goal.description[:200], description=goal.description),
            )
        else:
            plan, usage = await self._plan()
        transition = transitions.decomposed(self.goal, plan, now(), lease=self.lease, usage=usage)
        self._defer(transition)  # committed with the first step's start
        return list(transition.steps)

    async def _plan(self) -> tuple[tuple[StepSpec, ...], Usage]:
        """The checked plan and what every planning attempt used (recorded by the caller)."""
        attempt = 0
        spent = NO_USAGE
        while True:
            attempt += 1
            # The provider sees the planning usage so far, so its budget cap is right.
            goal = attrs.evolve(self.goal, usage=self.goal.usage + spent)
            if exhausted(goal):
                await self._fail(
                    "budget_exceeded",
                    f"token budget used up before planning attempt {attempt}: {_spent(goal)}",
                    usage=spent,
                )
            answer: object = None
            usage = NO_USAGE
            fault = Fault()
            error: ErrorInfo | None = None
            try:
                with anyio.move_on_after(self.step_timeout) as scope:
                    answer, usage = unwrap(await self.provider.plan(goal, goal.max_steps))
                if scope.cancelled_caught:
                    error = ErrorInfo(
                        "plan_timeout", f"planning timed out after {self.step_timeout}s"
                    )
            except Exception as exc:
                fault = Fault.of(exc)
                usage = fault.usage
                error = ErrorInfo("plan_failed", describe(exc))
            if passes(goal, usage):
                await self._fail(
                    "budget_exceeded",
                    f"planning attempt {attempt} used {usage.total_tokens} tokens, past the "
                    f"budget: {_spent(attrs.evolve(goal, usage=goal.usage + usage))}",
                    usage=spent + usage,
                )
            spent += usage
            if error is None:
                try:
                    return validate_plan(answer, goal.max_steps), spent
                except ValueError as exc:
                    error = ErrorInfo("invalid_plan", str(exc))
            if fault.final or not will_retry(attempt, self.goal.max_retries):
                await self._fail(
                    error.code,
                    f"planning failed after {attempt} attempt(s): {error.message}",
                    usage=spent,
                )
            log.warning(
                "goal %s: planning attempt %d failed: %s", self.goal.id, attempt, error.message
            )
            await anyio.sleep(max(self.policy.delay(attempt), fault.retry_after))

    async def _call_step(self, step: Step, previous: tuple[Step, ...]) -> object:
        """One provider call for `step`: streamed when live output is on and it can stream."""
        publish = self.publish_delta
        if publish is None or not isinstance(self.provider, StreamingProvider):
            return await self.provider.run_step(self.goal, step, previous)
        goal, numbers, open_ = self.goal, itertools.count(1), [True]

        def emit(text: str) -> None:
            if not isinstance(text, str):
                raise TypeError(f"emit() takes text, not {type(text).__name__}")
            if text and open_[0]:
                data = {
                    "step": step.index,
                    "attempt": step.attempts,
                    "after": goal.last_event_id,
                    "seq": next(numbers),
                    "text": text,
                }
                publish(
                    Event(0, STEP_DELTA, goal.id, goal.workflow_id, round(time.time(), 3), data)
                )

        try:
            return await self.provider.stream_step(goal, step, previous, emit)
        finally:
            open_[0] = False  # a provider that kept `emit` cannot publish into a later step

    async def _run_step(self, step: Step, previous: tuple[Step, ...]) -> Step:
        while True:
            if exhausted(self.goal):
                await self._fail(
                    "budget_exceeded",
                    f"token budget used up before step {step.index} ({step.title!r}): "
                    f"{_spent(self.goal)}",
                )
            transition = transitions.step_started(self.goal, step, now(), lease=self.lease)
            step = transition.steps[0]
            await self._apply(transition)
            error: ErrorInfo | None = None
            result: JSON = None
            usage = NO_USAGE
            fault = Fault()
            try:
                # move_on_after, not fail_after: a TimeoutError the provider raises itself
                # (a socket timeout) is a step error, not our step_timeout.
                with anyio.move_on_after(self.step_timeout) as scope:
                    result, usage = unwrap(await self._call_step(step, previous))
                if scope.cancelled_caught:
                    error = ErrorInfo("step_timeout", f"step timed out after {self.step_timeout}s")
                else:
                    check_json(result)
            except Exception as exc:
                fault = Fault.of(exc)
                usage += fault.usage
                error = ErrorInfo("step_error", describe(exc))
            if passes(self.goal, usage):
                error = ErrorInfo(
                    "budget_exceeded",
                    f"step {step.index} ({step.title!r}) used {usage.total_tokens} tokens, "
                    f"past the budget: "
                    f"{_spent(attrs.evolve(self.goal, usage=self.goal.usage + usage))}",
                )
                await self._apply(
                    transitions.step_failed(
                        self.goal, step, error, False, now(), lease=self.lease, usage=usage
                    )
                )
                await self._fail(error.code, error.message)
            if error is None:
                transition = transitions.step_completed(
                    self.goal, step, result, now(), lease=self.lease, usage=usage
                )
                self._defer(transition)  # committed with the next step's start, or the end
                return transition.steps[0]
            retry = not fault.final and will_retry(step.attempts, self.goal.max_retries)
            transition = transitions.step_failed(
                self.goal, step, error, retry, now(), lease=self.lease, usage=usage
            )
            step = transition.steps[0]
            await self._apply(transition)
            if not retry:
                await self._fail(
                    "step_failed",
                    f"step {step.index} ({step.title!r}) failed after {step.attempts} attempt(s): {error.message}",
                )
            await anyio.sleep(max(self.policy.delay(step.attempts), fault.retry_after))

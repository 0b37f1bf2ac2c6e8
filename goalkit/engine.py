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

import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from goalkit import transitions
from goalkit.models import JSON, ErrorInfo, Event, Goal, Step, StepSpec, check_json, validate_plan
from goalkit.plugins import resolve
from goalkit.providers import ModelProvider
from goalkit.retry import RetryPolicy, will_retry

__all__ = ["Coordinator", "EventBus"]

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

    @contextmanager
    def subscribe(self, goal_id: str) -> Iterator[MemoryObjectReceiveStream[Event]]:
        """Receive the events published for `goal_id` while the block runs."""
        send, receive = anyio.create_memory_object_stream[Event](INBOX_SIZE)
        inboxes = self._inboxes.setdefault(goal_id, set())
        inboxes.add(send)
        try:
            yield receive
        finally:
            inboxes.discard(send)
            if not inboxes:
                self._inboxes.pop(goal_id, None)
            send.close()
            receive.close()

    @property
    def subscriptions(self) -> int:
        """How many live subscriptions exist (for leak checks)."""
        return sum(len(s) for s in self._inboxes.values())

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
        for send in list(self._inboxes.get(event.goal_id, ())):
            # A full inbox drops the event: its subscriber notices the gap and reads storage.
            with suppress(anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                send.send_nowait(event)
        for send in self._sinks:
            send.send_nowait(event)


async def run_sink(
    name: str, call: Callable[..., object], queue: MemoryObjectReceiveStream[Event]
) -> None:
    """Feed one `goalkit_event` implementation from its queue, logging its failures."""
    async with queue:
        async for event in queue:
            try:
                await resolve(call(event=event))
            except Exception:
                log.exception(
                    "event sink %s failed on %s #%d of %s",
                    name,
                    event.type,
                    event.id,
                    event.goal_id,
                )


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
        goal = self.goal
        if goal.phase == "created":
            goal = await self._apply(transitions.decomposing(goal, now(), lease=self.lease))
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
            try:
                with anyio.fail_after(self.step_timeout):
                    answer = await self.provider.plan(self.goal, self.goal.max_steps)
                return validate_plan(answer, self.goal.max_steps)
            except TimeoutError:
                error = ErrorInfo("plan_timeout", f"planning timed out after {self.step_timeout}s")
            except ValueError as exc:
                error = ErrorInfo("invalid_plan", str(exc))
            except Exception as exc:
                error = ErrorInfo("plan_failed", describe(exc))
            if not will_retry(attempt, self.goal.max_retries):
                await self._fail(
                    error.code, f"planning failed after {attempt} attempt(s): {error.message}"
                )
            log.warning(
                "goal %s: planning attempt %d failed: %s", self.goal.id, attempt, error.message
            )
            await anyio.sleep(self.policy.delay(attempt))

    async def _run_step(self, step: Step, previous: tuple[Step, ...]) -> Step:
        while True:
            transition = transitions.step_started(self.goal, step, now(), lease=self.lease)
            step = transition.steps[0]
            await self._apply(transition)
            try:
                with anyio.fail_after(self.step_timeout):
                    result: JSON = await self.provider.run_step(self.goal, step, previous)
                check_json(result)
            except TimeoutError:
                error = ErrorInfo("step_timeout", f"step timed out after {self.step_timeout}s")
            except Exception as exc:
                error = ErrorInfo("step_error", describe(exc))
            else:
                transition = transitions.step_completed(
                    self.goal, step, result, now(), lease=self.lease
                )
                await self._apply(transition)
                return transition.steps[0]
            retry = will_retry(step.attempts, self.goal.max_retries)
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
            await anyio.sleep(self.policy.delay(step.attempts))

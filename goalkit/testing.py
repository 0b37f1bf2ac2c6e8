"""Helpers for testing code that uses goalkit: a provider you script, and an event recorder.

    from goalkit import GoalManager
    from goalkit.testing import EventRecorder, QueueProvider

    provider = QueueProvider("fake")
    provider.enqueue_plan(["Search", "Summarise"])
    provider.enqueue("found 3 papers", "a summary")
    recorder = EventRecorder()
    async with GoalManager("memory://", plugins=[provider, recorder]) as manager:
        goal = await manager.create("Research X", model="fake")
        goal = await manager.wait(goal.id)
    assert goal.result == "a summary"
    assert recorder.types(goal.id)[-1] == "goal.completed"

Both are ordinary plugins (objects with ``@hookimpl`` methods), registered like any other.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from goalkit.hookspecs import hookimpl
from goalkit.models import JSON, Answer, Event, Goal, Step, StepSpec
from goalkit.plugins import resolve
from goalkit.providers import ModelProvider

__all__ = ["EventRecorder", "QueueProvider"]


class QueueProvider:
    """A model provider plugin for one model name that answers from queues you fill.

    `enqueue` adds step results; an `Exception` instance in the queue is raised instead, and
    a callable is called with ``(goal, step, previous)`` and its (awaited) value used. Queue
    a `goalkit.Answer` (plan or result) to report token usage. With an
    empty step queue it answers ``"<title>: ok"``. With no plan queued it plans one step per
    line of the description. `calls` records every call as ``(method, goal id, step index)``.
    """

    def __init__(self, model: str = "fake", *, delay: float = 0.0) -> None:
        self.model = model
        self.delay = delay
        self.plans: deque[Sequence[str | StepSpec] | Answer | Exception] = deque()
        self.answers: deque[Any] = deque()
        self.calls: list[tuple[str, str, int]] = []

    def enqueue_plan(self, *plans: Sequence[str | StepSpec] | Answer | Exception) -> None:
        """Queue the answers of the next `plan` calls."""
        self.plans.extend(plans)

    def enqueue(self, *answers: JSON | Exception | Callable[..., Any]) -> None:
        """Queue the answers of the next `run_step` calls."""
        self.answers.extend(answers)

    def count(self, goal_id: str, step: int) -> int:
        """How many times `run_step` was called for this goal's step."""
        return sum(1 for c in self.calls if c == ("run_step", goal_id, step))

    @hookimpl
    def goalkit_model_provider(self, model: str) -> ModelProvider | None:
        return self if model == self.model else None

    async def plan(self, goal: Goal, max_steps: int) -> Sequence[str | StepSpec] | Answer:
        self.calls.append(("plan", goal.id, 0))
        await anyio.sleep(self.delay)
        if self.plans:
            plan = self.plans.popleft()
            if isinstance(plan, Exception):
                raise plan
            return plan
        return [line.strip() for line in goal.description.splitlines() if line.strip()]

    async def run_step(self, goal: Goal, step: Step, previous: Sequence[Step]) -> JSON:
        self.calls.append(("run_step", goal.id, step.index))
        await anyio.sleep(self.delay)
        if not self.answers:
            return f"{step.title}: ok"
        answer = self.answers.popleft()
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return await resolve(answer(goal, step, previous))
        return answer


class EventRecorder:
    """An event sink plugin that keeps every event it receives, per goal."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._by_goal: defaultdict[str, list[Event]] = defaultdict(list)

    @hookimpl
    def goalkit_event(self, event: Event) -> None:
        self.events.append(event)
        self._by_goal[event.goal_id].append(event)

    def of(self, goal_id: str) -> list[Event]:
        """The events received for one goal, in the order received."""
        return list(self._by_goal[goal_id])

    def types(self, goal_id: str) -> list[str]:
        """The event types received for one goal, in order."""
        return [e.type for e in self._by_goal[goal_id]]

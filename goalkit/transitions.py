"""The workflow state machine as pure functions: state in, `Transition` out.

Each function takes the goal as it is stored and returns the write that moves it on: the new
goal row, the steps that change, and the event that records it. Storage backends apply a
`Transition` in one transaction (state and event together, or neither), and the engine never
builds goal rows by hand. Nothing here does I/O or reads the clock: `now` is passed in.
"""

from __future__ import annotations

from typing import Any

import attrs

from goalkit.models import JSON, NO_USAGE, ErrorInfo, Goal, Step, StepSpec, Usage

__all__ = [
    "Transition",
    "cancel",
    "chain",
    "complete",
    "create",
    "decomposed",
    "decomposing",
    "fail",
    "step_completed",
    "step_failed",
    "step_started",
]


@attrs.frozen
class Transition:
    """One atomic write: the goal's new row, changed steps, and (usually) one event, then
    the writes chained after it, if any (`then`).

    The fences say when the write must be refused: `lease` — only while this lease owner
    still holds the goal (the engine's writes); `version` — only while the goal's newest
    event is still this number (writes from outside the engine, such as cancel).
    A transition with `event=None` changes state only and appends no event (the move to
    the `decomposing` phase, which the API reports but the event list of the seed does not).
    """

    goal: Goal
    """The goal's row after the write; its `last_event_id` counts the transition's event."""
    steps: tuple[Step, ...] = ()
    event: str | None = None
    data: dict[str, JSON] = attrs.field(factory=dict)
    lease: str | None = None
    version: int | None = None
    then: Transition | None = None
    """A write of the same goal applied right after this one, in the same transaction (see
    `chain`): both or neither."""

    def links(self) -> tuple[Transition, ...]:
        """This transition and those chained after it, in the order they apply."""
        found: list[Transition] = []
        link: Transition | None = self
        while link is not None:
            found.append(link)
            link = link.then
        return tuple(found)


def chain(first: Transition, then: Transition) -> Transition:
    """`first` followed by `then` as one atomic write: one transaction, one commit.

    `then` must have been built from the goal `first` leaves (``first.goal``). Storage checks
    each link's fences after applying the links before it, and refuses the whole chain if one
    is refused. The engine chains a write that needs no commit of its own (a step completed)
    with the next one (the next step started), halving the commits between provider calls.
    """
    if then.goal.id != first.goal.id:
        raise ValueError("chained transitions must be of the same goal")
    if first.then is not None:
        return attrs.evolve(first, then=chain(first.then, then))
    return attrs.evolve(first, then=then)


def _moved(goal: Goal, now: int, **changes: Any) -> Goal:
    """The goal after a transition that appends one event (pass `last_event_id` otherwise)."""
    changes.setdefault("last_event_id", goal.last_event_id + 1)
    return attrs.evolve(goal, updated_at=now, **changes)


def create(goal: Goal) -> Transition:
    """The first write of a goal: its row and `goal.created` (its event 1)."""
    return Transition(
        goal=attrs.evolve(goal, last_event_id=1),
        event="goal.created",
        data={
            "description": goal.description,
            "model": goal.model,
            "mode": goal.mode,
            "max_steps": goal.max_steps,
            "max_retries": goal.max_retries,
            "tags": list(goal.tags),
            "owner": goal.owner,
            "max_tokens": goal.max_tokens,
        },
    )


def decomposing(goal: Goal, now: int, *, lease: str) -> Transition:
    """The coordinator starts to plan; no event (see `Transition`)."""
    return Transition(
        goal=_moved(goal, now, phase="decomposing", last_event_id=goal.last_event_id), lease=lease
    )


def decomposed(
    goal: Goal, plan: tuple[StepSpec, ...], now: int, *, lease: str, usage: Usage = NO_USAGE
) -> Transition:
    """The plan is known: its steps are stored as pending and `goal.decomposed` records it.

    `usage` is what every planning attempt used; it is added to the goal's. Like `step_completed`, it is progress, so it resets the goal's `recoveries`.
    """
    steps = tuple(
        Step(index=i, title=spec.title, description=spec.description)
        for i, spec in enumerate(plan, start=1)
    )
    return Transition(
        goal=_moved(
            goal,
            now,
            phase="running",
            total_steps=len(steps),
            current_step=1,
            usage=goal.usage + usage,
            recoveries=0,
        ),
        steps=steps,
        event="goal.decomposed",
        data={
            "total_steps": len(steps),
            "steps": [{"index": s.index, "title": s.title} for s in steps],
            "usage": usage.to_dict(),
        },
        lease=lease,
    )


def step_started(goal: Goal, step: Step, now: int, *, lease: str) -> Transition:
    """An attempt of `step` begins; its attempt count goes up first, so a crash counts."""
    started = attrs.evolve(
        step, status="running", attempts=step.attempts + 1, started_at=now, completed_at=None
    )
    return Transition(
        goal=_moved(goal, now, phase="running", current_step=step.index),
        steps=(started,),
        event="goal.step_started",
        data={"step": step.index, "title": step.title, "attempt": started.attempts},
        lease=lease,
    )


def step_completed(
    goal: Goal, step: Step, result: JSON, now: int, *, lease: str, usage: Usage = NO_USAGE
) -> Transition:
    """`step` returned `result`, its call using `usage`; the next step becomes current."""
    done = attrs.evolve(
        step,
        status="completed",
        result=result,
        error=None,
        completed_at=now,
        usage=step.usage + usage,
    )
    last = step.index >= goal.total_steps
    return Transition(
        goal=_moved(
            goal,
            now,
            steps_completed=goal.steps_completed + 1,
            current_step=None if last else step.index + 1,
            usage=goal.usage + usage,
            recoveries=0,  # progress: whatever crashed before was not this goal's doing
        ),
        steps=(done,),
        event="goal.step_completed",
        data={
            "step": step.index,
            "title": step.title,
            "attempt": step.attempts,
            "result": result,
            "usage": usage.to_dict(),
        },
        lease=lease,
    )


def step_failed(
    goal: Goal,
    step: Step,
    error: ErrorInfo,
    will_retry: bool,
    now: int,
    *,
    lease: str,
    usage: Usage = NO_USAGE,
) -> Transition:
    """An attempt of `step` failed; it waits as pending for a retry, or is failed for good.

    `usage` is what the failed call reported using, if anything (see `ProviderError`).
    """
    failed = attrs.evolve(
        step,
        status="pending" if will_retry else "failed",
        error=error,
        completed_at=now,
        usage=step.usage + usage,
    )
    return Transition(
        goal=_moved(goal, now, usage=goal.usage + usage),
        steps=(failed,),
        event="goal.step_failed",
        data={
            "step": step.index,
            "title": step.title,
            "attempt": step.attempts,
            "will_retry": will_retry,
            "error": error.to_dict(),
            "usage": usage.to_dict(),
        },
        lease=lease,
    )


def complete(goal: Goal, result: JSON, now: int, *, lease: str) -> Transition:
    """Every step completed: the goal's result is the last step's result."""
    return Transition(
        goal=_moved(
            goal,
            now,
            status="completed",
            phase="completed",
            current_step=None,
            result=result,
            completed_at=now,
        ),
        event="goal.completed",
        data={"result": result, "steps_completed": goal.steps_completed},
        lease=lease,
    )


def fail(
    goal: Goal, error: ErrorInfo, now: int, *, lease: str | None, usage: Usage = NO_USAGE
) -> Transition:
    """The goal ends as failed with `error`; `usage` (planning calls not yet recorded) is added."""
    total = goal.usage + usage
    return Transition(
        goal=_moved(
            goal, now, status="failed", phase="failed", error=error, completed_at=now, usage=total
        ),
        event="goal.failed",
        data={"error": error.to_dict(), "steps_completed": goal.steps_completed},
        lease=lease,
    )


def cancel(goal: Goal, now: int) -> Transition:
    """Cancel from outside the engine: fenced by version, unfinished steps become cancelled.

    `goal` must carry its steps (as `Storage.get_goal` returns it by default). The version
    fence counts events, so a state-only write (`decomposing`) does not trip it; cancel
    overwrites that phase anyway.
    """
    steps = tuple(
        attrs.evolve(step, status="cancelled", completed_at=now)
        for step in goal.steps
        if step.status in ("pending", "running")
    )
    return Transition(
        goal=_moved(
            goal, now, status="cancelled", phase="cancelled", current_step=None, completed_at=now
        ),
        steps=steps,
        event="goal.cancelled",
        data={"steps_completed": goal.steps_completed, "total_steps": goal.total_steps},
        version=goal.last_event_id,
    )

"""The model provider protocol: how the engine asks a model to plan and to run a step.

Providers are plugins: a `goalkit_model_provider(model)` hook implementation returns one for
the model names it serves. The built-in `scripted` provider lives in
`goalkit.providers.scripted`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from goalkit.models import JSON, Goal, Step, StepSpec

__all__ = ["ModelProvider"]


@runtime_checkable
class ModelProvider(Protocol):
    """Decomposes goals into steps and runs one step at a time.

    Both methods are cancelled (anyio cancellation) when the goal is cancelled or its step
    times out, so they must not swallow cancellation. An exception from either is a failure
    that the engine retries up to the goal's `max_retries`.
    """

    async def plan(self, goal: Goal, max_steps: int) -> Sequence[str | StepSpec]:
        """Return the goal's steps: 1 to `max_steps` titles or `StepSpec` values."""
        ...

    async def run_step(self, goal: Goal, step: Step, previous: Sequence[Step]) -> JSON:
        """Run one step and return its JSON-able result.

        :param previous: the completed steps before this one, with their results.
        """
        ...

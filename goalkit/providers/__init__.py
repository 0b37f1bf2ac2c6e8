"""The model provider protocol: how the engine asks a model to plan and to run a step.

Providers are plugins: a `goalkit_model_provider(model)` hook implementation returns one for
the model names it serves. The built-in `scripted` provider lives in
`goalkit.providers.scripted`, the OpenAI-compatible and Anthropic ones in
`goalkit.providers.openai` and `goalkit.providers.anthropic`.

Beyond the two required methods a provider may have two optional ones, found by name:
``stream_step`` (`StreamingProvider`: used instead of ``run_step`` when the manager's
``live_output`` is on) and ``aclose`` (awaited once when the manager closes, to release
clients the provider holds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from goalkit.models import JSON, Answer, Goal, Step, StepSpec

__all__ = ["Emit", "ModelProvider", "StreamingProvider"]

Emit = Callable[[str], None]
"""Hands one chunk of streamed text to live subscribers; never blocks."""


@runtime_checkable
class ModelProvider(Protocol):
    """Decomposes goals into steps and runs one step at a time.

    Both methods are cancelled (anyio cancellation) when the goal is cancelled or its step
    times out, so they must not swallow cancellation. An exception from either is a failure
    that the engine retries up to the goal's `max_retries`.

    Either may return its value wrapped in an `Answer` to report the tokens the call used;
    the bare value counts as none. The goal passed in carries its budget: a provider caps
    the output of the call at `Goal.tokens_left` when that is not None.
    """

    async def plan(self, goal: Goal, max_steps: int) -> Sequence[str | StepSpec] | Answer:
        """Return the goal's steps: 1 to `max_steps` titles or `StepSpec` values."""
        ...

    async def run_step(self, goal: Goal, step: Step, previous: Sequence[Step]) -> JSON | Answer:
        """Run one step and return its JSON-able result.

        :param previous: the completed steps before this one, with their results.
        """
        ...


@runtime_checkable
class StreamingProvider(Protocol):
    """A provider that can hand out the text of a step while the model writes it."""

    async def stream_step(
        self, goal: Goal, step: Step, previous: Sequence[Step], emit: Emit
    ) -> JSON | Answer:
        """Run one step as `run_step` does, calling ``emit(text)`` for each chunk of text.

        Each chunk becomes a live-only ``goal.step_delta`` event. The return value is the
        step's result, as from `run_step`; the chunks are not joined for you.
        """
        ...

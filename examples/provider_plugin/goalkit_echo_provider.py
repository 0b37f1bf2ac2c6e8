"""An example goalkit plugin package: a provider for the model names ``echo/<anything>``.

It plans one step per line of the goal's description and answers each step by echoing its
title, prefixed with what follows ``echo/`` in the model name. Installed, it is found
through the ``goalkit`` entry point in ``pyproject.toml``; nothing else registers it.
"""

from __future__ import annotations

from collections.abc import Sequence

import goalkit
from goalkit.models import JSON, Goal, Step, StepSpec

PREFIX = "echo/"


class EchoProvider:
    """A `goalkit.providers.ModelProvider`: two async methods, no base class needed."""

    def __init__(self, voice: str) -> None:
        self.voice = voice

    async def plan(self, goal: Goal, max_steps: int) -> list[StepSpec]:
        lines = [line.strip() for line in goal.description.splitlines() if line.strip()]
        return [StepSpec(title=line) for line in lines[:max_steps]] or [StepSpec("Echo")]

    async def run_step(self, goal: Goal, step: Step, previous: Sequence[Step]) -> JSON:
        return f"{self.voice}: {step.title}"


@goalkit.hookimpl
def goalkit_model_provider(model: str) -> EchoProvider | None:
    """Serve ``echo/<anything>``; every other name is left to other plugins."""
    if model.startswith(PREFIX) and len(model) > len(PREFIX):
        return EchoProvider(voice=model[len(PREFIX) :])
    return None

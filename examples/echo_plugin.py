"""A plugin as a module: a provider that plans one step per line and echoes each step.

Load it into the command line with ``-p``:

    goalkit run -p examples/echo_plugin.py --model echo "Fetch the data
    Clean it
    Plot it"

or install it as an entry point of the ``goalkit`` group (see the plugin guide).
"""

from __future__ import annotations

from collections.abc import Sequence

from goalkit import Goal, Step, hookimpl


class EchoProvider:
    async def plan(self, goal: Goal, max_steps: int) -> list[str]:
        lines = [line.strip() for line in goal.description.splitlines() if line.strip()]
        return lines[:max_steps]

    async def run_step(self, goal: Goal, step: Step, previous: Sequence[Step]) -> str:
        return f"echo: {step.title}"


@hookimpl
def goalkit_model_provider(model: str) -> EchoProvider | None:
    return EchoProvider() if model == "echo" else None

"""The model provider plugin `benchmarks/http_load.py` loads into ``goalkit serve`` (``--plugin``).

Two model names:

* ``idle``: `plan` waits for an hour. Goals created under the HTTP load stay cheap: the
  first ``max_concurrent`` (100) are claimed and wait inside this call; the others stay
  queued and cost nothing until a slot frees, which no slot does during a run. What the
  server does in the background is then a lease renewal of 100 goals once a second.
* ``paced/<steps>/<ms>``: `plan` first waits until the file named by the environment
  variable ``GOALKIT_BENCH_GATE`` exists (so that subscribers can connect before any event
  after ``goal.created``), then returns `steps` steps; `plan` and each `run_step` sleep
  `ms` milliseconds times a random factor from 0.5 to 1.5, so the events of 100 goals are
  spread out rather than in lock step.

Only benchmarks load it; it is no part of goalkit.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import Any

import anyio

from goalkit import hookimpl

GATE_VARIABLE = "GOALKIT_BENCH_GATE"
GATE_POLL = 0.005
IDLE_WAIT = 3600.0

_opened: anyio.Event | None = None
"""Set once the gate file exists; one task polls for it, the other goals wait on this."""


async def _gate() -> None:
    global _opened
    path = os.environ.get(GATE_VARIABLE)
    if not path or await anyio.Path(path).exists():
        return
    if _opened is not None:
        await _opened.wait()
        return
    _opened = anyio.Event()
    # A file written by another process: there is nothing to wait on but its existence.
    while not await anyio.Path(path).exists():  # noqa: ASYNC110
        await anyio.sleep(GATE_POLL)
    _opened.set()


class Idle:
    async def plan(self, goal: Any, max_steps: int) -> list[str]:
        await anyio.sleep(IDLE_WAIT)
        return ["never reached"]

    async def run_step(self, goal: Any, step: Any, previous: Sequence[Any]) -> str:
        return "ok"


class Paced:
    def __init__(self, steps: int, delay: float) -> None:
        self.steps = steps
        self.delay = delay

    async def _pause(self) -> None:
        await anyio.sleep(self.delay * random.uniform(0.5, 1.5))

    async def plan(self, goal: Any, max_steps: int) -> list[str]:
        await _gate()
        await self._pause()
        return [f"step {i}" for i in range(1, min(self.steps, max_steps) + 1)]

    async def run_step(self, goal: Any, step: Any, previous: Sequence[Any]) -> str:
        await self._pause()
        return f"step {step.index} done"


@hookimpl
def goalkit_model_provider(model: str) -> Idle | Paced | None:
    if model == "idle":
        return Idle()
    name, _, rest = model.partition("/")
    if name != "paced":
        return None
    steps, _, ms = rest.partition("/")
    if not (steps.isdigit() and ms.isdigit()):
        return None
    return Paced(int(steps), int(ms) / 1000)

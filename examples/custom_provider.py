"""A model provider plugin and an event sink plugin, run end to end.

`WordCounter` stands in for a real model: it plans one step per comma-separated topic and
"answers" each step by counting words, so the example needs no key and no network. Its
first call of step 2 raises, to show a retry. `PrintSink` prints every event it receives.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from goalkit import Event, Goal, GoalManager, Step, StepSpec, hookimpl


class WordCounter:
    """A `ModelProvider` for the model name ``word-counter``."""

    def __init__(self) -> None:
        self.failed_once = False

    @hookimpl
    def goalkit_model_provider(self, model: str) -> WordCounter | None:
        # Synchronous and cheap: only pick the provider; no I/O here.
        return self if model == "word-counter" else None

    async def plan(self, goal: Goal, max_steps: int) -> Sequence[str | StepSpec]:
        topics = [t.strip() for t in goal.description.split(",") if t.strip()]
        return [StepSpec(f"Count the words of {t!r}", description=t) for t in topics][:max_steps]

    async def run_step(self, goal: Goal, step: Step, previous: Sequence[Step]) -> dict[str, int]:
        await anyio.sleep(0.01)  # a real provider awaits its HTTP call here
        if step.index == 2 and not self.failed_once:
            self.failed_once = True
            raise ConnectionError("the model server hung up")  # retried with backoff
        total = sum(s.result["words"] for s in previous)  # previous steps and their results
        words = len((step.description or "").split())
        return {"words": words, "running_total": total + words}


class PrintSink:
    """An event sink: called once per event, after the event is stored."""

    @hookimpl
    async def goalkit_event(self, event: Event) -> None:
        step = f" step {event.data['step']}" if "step" in event.data else ""
        print(f"[sink] #{event.id} {event.type}{step}")


async def main() -> None:
    plugins = [WordCounter(), PrintSink()]
    async with GoalManager("memory://", plugins=plugins, retry_backoff=0.05) as manager:
        goal = await manager.create(
            "durable workflows, structured concurrency with anyio, plugins with pluggy",
            model="word-counter",
        )
        goal = await manager.wait(goal.id, timeout=10)
        print(goal.status, goal.result)
        for step in goal.steps:
            print(f"step {step.index}: {step.status} after {step.attempts} attempt(s)")
        assert goal.status == "completed"
        assert goal.result == {"words": 3, "running_total": 9}
        assert [s.attempts for s in goal.steps] == [1, 2, 1]


if __name__ == "__main__":
    anyio.run(main)

"""Token usage, a token budget and live output, offline with the scripted provider.

The scripted provider counts one token per word, so the numbers are small and always the
same; with a real model they are what its API reports. The first goal streams its steps as
``goal.step_delta`` events; the second has a budget too small to finish and fails with
``budget_exceeded`` before the call that would pass it.
"""

import anyio

from goalkit import GoalManager


async def main() -> None:
    async with GoalManager("memory://", live_output=True) as manager:
        goal = await manager.create("Outline the talk. Then write the abstract")
        async for event in manager.events(goal.id):
            if event.type == "goal.step_delta":  # live only: never stored, id 0
                print(event.data["text"], end="", flush=True)
            elif event.type == "goal.step_completed":
                print(f"  <- step {event.data['step']} used {event.data['usage']}")
        goal = await manager.get(goal.id)
        print(goal.status, "used", goal.usage.total_tokens, "tokens:", goal.usage)

        tight = await manager.create("Outline the talk. Then write the abstract", max_tokens=60)
        tight = await manager.wait(tight.id)
        assert tight.error is not None
        print(tight.status, tight.error.code, "-", tight.error.message)
        print([(s.index, s.status) for s in tight.steps])


if __name__ == "__main__":
    anyio.run(main)

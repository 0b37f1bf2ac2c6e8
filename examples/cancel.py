"""Cancel a goal while its provider call is in flight.

``scripted/2`` is the offline `scripted` provider pausing 2 s in every call (the plan and
each step). Step 1 is still running when the cancel arrives: its call is interrupted at
once, the unfinished steps become ``cancelled``, and no step starts afterwards.
"""

import time

import anyio

from goalkit import GoalManager


async def main() -> None:
    async with GoalManager("memory://") as manager:
        goal = await manager.create("Plan the launch. Write the announcement.", model="scripted/2")
        async for event in manager.events(goal.id):
            print(event.id, event.type)
            if event.type == "goal.step_started":
                goal = await manager.cancel(goal.id)
                cancelled_at = time.monotonic()
    # Leaving the block waited for the coordinator: the 2 s call did not run to its end.
    assert time.monotonic() - cancelled_at < 1
    print(goal.status, [step.status for step in goal.steps])
    assert [step.status for step in goal.steps] == ["cancelled", "cancelled"]


if __name__ == "__main__":
    anyio.run(main)

import anyio

from goalkit import GoalManager


async def main() -> None:
    async with GoalManager("sqlite:///goals.db") as manager:
        goal = await manager.create(
            "Find three papers on quantum error correction. "
            "Summarise each, then compare their results.",
            model="scripted",  # the built-in offline stand-in for a model
            tags=["research"],
        )
        async for event in manager.events(goal.id):  # stored events, then live ones
            print(event.id, event.type, event.data.get("title", ""))
        goal = await manager.wait(goal.id)  # returns at once: the goal has ended
        print(goal.status, f"{goal.steps_completed}/{goal.total_steps} steps")
        print(goal.result)


if __name__ == "__main__":
    anyio.run(main)

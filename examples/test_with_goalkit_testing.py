"""Testing agent code with `goalkit.testing`: a scripted provider and an event recorder.

Run it with ``pytest examples/test_with_goalkit_testing.py``. The anyio pytest plugin (which
anyio installs) runs the async tests; ``memory://`` keeps each manager's store private.
"""

import pytest

from goalkit import GoalManager
from goalkit.testing import EventRecorder, QueueProvider

pytestmark = pytest.mark.anyio


async def test_the_result_is_the_last_steps_answer() -> None:
    provider = QueueProvider("fake")
    provider.enqueue_plan(["Search", "Summarise"])
    provider.enqueue("found 3 papers", "a summary")
    recorder = EventRecorder()
    async with GoalManager("memory://", plugins=[provider, recorder]) as manager:
        goal = await manager.create("Research X", model="fake")
        goal = await manager.wait(goal.id, timeout=5)
    assert goal.result == "a summary"
    assert recorder.types(goal.id) == [
        "goal.created",
        "goal.decomposed",
        "goal.step_started",
        "goal.step_completed",
        "goal.step_started",
        "goal.step_completed",
        "goal.completed",
    ]


async def test_a_failing_step_is_retried_then_fails_the_goal() -> None:
    provider = QueueProvider("fake")
    provider.enqueue_plan(["Flaky step"])
    provider.enqueue(TimeoutError("slow"), RuntimeError("down"))  # raised, not returned
    async with GoalManager("memory://", plugins=[provider], retry_backoff=0) as manager:
        goal = await manager.create("Research Y", model="fake", max_retries=1)
        goal = await manager.wait(goal.id, timeout=5)
    assert goal.status == "failed"
    assert goal.error is not None and goal.error.code == "step_failed"
    assert provider.count(goal.id, step=1) == 2  # one attempt plus one retry

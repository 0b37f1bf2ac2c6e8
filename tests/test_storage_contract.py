"""The storage contract: every backend behaves the same, as the engine uses it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from goalkit import transitions
from goalkit.errors import GoalConflict, GoalNotFound, InvalidGoal, LeaseLost, StorageError
from goalkit.models import (
    ErrorInfo,
    Goal,
    StepSpec,
    Usage,
    encode_cursor,
    new_goal_id,
    new_workflow_id,
)
from goalkit.storage import Storage
from goalkit.storage import memory as memory_backend
from goalkit.storage import sqlite as sqlite_backend

pytestmark = pytest.mark.anyio

NOW = 1_700_000_000


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    if request.param == "memory":
        backend = memory_backend.goalkit_storage("memory://")
    else:
        backend = sqlite_backend.goalkit_storage(f"sqlite:///{tmp_path / 'goals.db'}")
    assert isinstance(backend, Storage)
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


def new_goal(
    *,
    owner: str = "alice",
    tags: tuple[str, ...] = (),
    max_steps: int = 10,
    max_tokens: int | None = None,
) -> Goal:
    return Goal(
        id=new_goal_id(),
        workflow_id=new_workflow_id(),
        description="Write unit tests",
        model="scripted",
        mode="plan",
        max_steps=max_steps,
        max_retries=2,
        tags=tags,
        owner=owner,
        status="active",
        phase="created",
        created_at=NOW,
        updated_at=NOW,
        max_tokens=max_tokens,
    )


async def create(store: Storage, **fields: Any) -> Goal:
    """Create a goal and return it as stored."""
    goal = new_goal(**fields)
    await store.create_goal(transitions.create(goal))
    stored = await store.get_goal(goal.id)
    assert stored is not None
    return stored


async def apply(store: Storage, transition: transitions.Transition) -> Goal:
    """Commit a transition and return the goal as stored afterwards, with its steps."""
    await store.commit(transition)
    goal = await store.get_goal(transition.goal.id)
    assert goal is not None
    return goal


async def claimed(store: Storage, owner: str = "m1", **fields: Any) -> Goal:
    """Create a goal and lease it to `owner`."""
    goal = await create(store, **fields)
    (got,) = await store.claim_goals(owner, ttl=60, limit=1, exclude=())
    assert got.id == goal.id
    return got


async def run_plan(store: Storage, goal: Goal, titles: list[str], lease: str = "m1") -> Goal:
    goal = await apply(store, transitions.decomposing(goal, NOW + 1, lease=lease))
    plan = tuple(StepSpec(title) for title in titles)
    return await apply(store, transitions.decomposed(goal, plan, NOW + 2, lease=lease))


class TestCreateAndGet:
    async def test_create_returns_event_one(self, store: Storage) -> None:
        """Creating a goal stores `goal.created` as event 1 with the creation fields."""
        goal = new_goal(tags=("qa",))
        event = await store.create_goal(transitions.create(goal))
        assert (event.id, event.type, event.goal_id) == (1, "goal.created", goal.id)
        assert event.workflow_id == goal.workflow_id
        assert event.data["tags"] == ["qa"]
        assert await store.read_events(goal.id) == [event]

    async def test_get_returns_goal_as_created(self, store: Storage) -> None:
        """A created goal reads back equal to what was written, with last_event_id 1."""
        goal = new_goal(tags=("qa", "docs"))
        await store.create_goal(transitions.create(goal))
        assert await store.get_goal(goal.id) == attrs.evolve(goal, last_event_id=1)

    async def test_get_unknown_goal_is_none(self, store: Storage) -> None:
        """An unknown goal id reads as None."""
        assert await store.get_goal("goal-missing") is None

    async def test_duplicate_id_conflicts(self, store: Storage) -> None:
        """Creating a goal whose id exists is a GoalConflict and changes nothing."""
        goal = await create(store)
        with pytest.raises(GoalConflict):
            await store.create_goal(transitions.create(attrs.evolve(new_goal(), id=goal.id)))
        assert await store.get_goal(goal.id) == goal
        assert len(await store.read_events(goal.id)) == 1

    async def test_create_without_event_is_a_storage_error(self, store: Storage) -> None:
        """A creation that would store no event is refused as a StorageError and stores nothing."""
        goal = new_goal()
        with pytest.raises(StorageError, match="needs a transition with an event"):
            await store.create_goal(attrs.evolve(transitions.create(goal), event=None))
        assert await store.get_goal(goal.id) is None

    async def test_get_without_steps(self, store: Storage) -> None:
        """`steps=False` leaves the steps out; the default includes them in order."""
        goal = await run_plan(store, await claimed(store), ["a", "b", "c"])
        assert [s.title for s in goal.steps] == ["a", "b", "c"]
        assert [s.index for s in goal.steps] == [1, 2, 3]
        bare = await store.get_goal(goal.id, steps=False)
        assert bare is not None
        assert bare.steps == ()
        assert bare == attrs.evolve(goal, steps=())


class TestEventNumbering:
    async def test_lifecycle_numbers_events_without_gaps(self, store: Storage) -> None:
        """A whole run stores its events 1..n in order; a transition without event adds none."""
        goal = await claimed(store)
        goal = await apply(store, transitions.decomposing(goal, NOW + 1, lease="m1"))
        assert goal.phase == "decomposing"
        assert goal.last_event_id == 1
        plan = (StepSpec("one"), StepSpec("two"))
        goal = await apply(store, transitions.decomposed(goal, plan, NOW + 2, lease="m1"))
        for step in goal.steps:
            goal = await apply(store, transitions.step_started(goal, step, NOW + 3, lease="m1"))
            running = goal.steps[step.index - 1]
            goal = await apply(
                store,
                transitions.step_completed(goal, running, {"n": step.index}, NOW + 4, lease="m1"),
            )
        goal = await apply(store, transitions.complete(goal, {"n": 2}, NOW + 5, lease="m1"))

        events = await store.read_events(goal.id)
        assert [e.id for e in events] == list(range(1, 8))
        assert [e.type for e in events] == [
            "goal.created",
            "goal.decomposed",
            "goal.step_started",
            "goal.step_completed",
            "goal.step_started",
            "goal.step_completed",
            "goal.completed",
        ]
        assert goal.last_event_id == 7
        assert goal.status == "completed"
        assert goal.result == {"n": 2}
        assert [s.status for s in goal.steps] == ["completed", "completed"]
        assert [s.result for s in goal.steps] == [{"n": 1}, {"n": 2}]
        assert all(e.workflow_id == goal.workflow_id for e in events)

    async def test_commit_returns_stored_event(self, store: Storage) -> None:
        """`commit` returns the event exactly as `read_events` later gives it back."""
        goal = await run_plan(store, await claimed(store), ["a"])
        (event,) = await store.commit(
            transitions.step_started(goal, goal.steps[0], NOW, lease="m1")
        )
        assert event.id == 3
        assert (await store.read_events(goal.id, after=2)) == [event]

    async def test_commit_without_event_returns_none(self, store: Storage) -> None:
        """A transition with no event returns no events and keeps the event count."""
        goal = await claimed(store)
        assert await store.commit(transitions.decomposing(goal, NOW, lease="m1")) == ()
        assert len(await store.read_events(goal.id)) == 1

    async def test_read_events_after_and_limit(self, store: Storage) -> None:
        """`after` skips events up to that number and `limit` caps how many come back."""
        goal = await run_plan(store, await claimed(store), ["a"])
        for _ in range(3):
            goal = await apply(
                store, transitions.step_started(goal, goal.steps[0], NOW + 3, lease="m1")
            )
        assert [e.id for e in await store.read_events(goal.id)] == [1, 2, 3, 4, 5]
        assert [e.id for e in await store.read_events(goal.id, after=2)] == [3, 4, 5]
        assert [e.id for e in await store.read_events(goal.id, after=1, limit=2)] == [2, 3]
        assert await store.read_events(goal.id, after=5) == []
        assert await store.read_events("goal-missing") == []

    async def test_events_of_goals_are_numbered_independently(self, store: Storage) -> None:
        """Each goal's log starts at 1, whatever other goals have stored."""
        first = await run_plan(store, await claimed(store), ["a"])
        second = await create(store)
        assert first.last_event_id == 2
        assert [e.id for e in await store.read_events(second.id)] == [1]


class TestChains:
    """A chained transition (`transitions.chain`) is one write: every link, or none."""

    async def test_a_chain_applies_every_link_in_order(self, store: Storage) -> None:
        """Step 1 completed and step 2 started in one commit: two events, numbered on."""
        goal = await run_plan(store, await claimed(store), ["a", "b"])
        goal = await apply(store, transitions.step_started(goal, goal.steps[0], NOW, lease="m1"))
        done = transitions.step_completed(goal, goal.steps[0], "A", NOW + 1, lease="m1")
        start = transitions.step_started(done.goal, goal.steps[1], NOW + 2, lease="m1")
        events = await store.commit(transitions.chain(done, start))
        assert [(e.id, e.type) for e in events] == [
            (4, "goal.step_completed"),
            (5, "goal.step_started"),
        ]
        assert await store.read_events(goal.id, after=3) == list(events)
        after = await store.get_goal(goal.id)
        assert after is not None
        assert (after.last_event_id, after.steps_completed, after.current_step) == (5, 1, 2)
        assert [(s.status, s.result) for s in after.steps] == [
            ("completed", "A"),
            ("running", None),
        ]

    async def test_the_last_link_may_end_the_goal(self, store: Storage) -> None:
        """A chain ending in `complete` releases the lease like a single terminal write."""
        goal = await run_plan(store, await claimed(store), ["a"])
        goal = await apply(store, transitions.step_started(goal, goal.steps[0], NOW, lease="m1"))
        done = transitions.step_completed(goal, goal.steps[0], "A", NOW + 1, lease="m1")
        end = transitions.complete(done.goal, "A", NOW + 1, lease="m1")
        events = await store.commit(transitions.chain(done, end))
        assert [e.type for e in events] == ["goal.step_completed", "goal.completed"]
        stored = await store.get_goal(goal.id)
        assert stored is not None and stored.status == "completed"
        assert await store.claim_goals("m2", ttl=60, limit=5, exclude=()) == []

    async def test_a_refused_link_refuses_the_chain(self, store: Storage) -> None:
        """A later link whose fence fails leaves the goal exactly as it was."""
        goal = await run_plan(store, await claimed(store), ["a", "b"])
        goal = await apply(store, transitions.step_started(goal, goal.steps[0], NOW, lease="m1"))
        done = transitions.step_completed(goal, goal.steps[0], "A", NOW + 1, lease="m1")
        stolen = transitions.step_started(done.goal, goal.steps[1], NOW + 2, lease="m2")
        with pytest.raises(LeaseLost):
            await store.commit(transitions.chain(done, stolen))
        assert await store.get_goal(goal.id) == goal
        assert len(await store.read_events(goal.id)) == 3

    async def test_a_link_after_the_end_is_refused(self, store: Storage) -> None:
        """Nothing may follow a terminal link: its lease is gone once the goal has ended."""
        goal = await run_plan(store, await claimed(store), ["a"])
        end = transitions.fail(goal, ErrorInfo("x", "y"), NOW, lease="m1")
        more = transitions.step_started(end.goal, goal.steps[0], NOW, lease="m1")
        with pytest.raises(LeaseLost):
            await store.commit(transitions.chain(end, more))
        assert await store.get_goal(goal.id) == goal

    async def test_unserialisable_data_in_a_link_refuses_the_chain(self, store: Storage) -> None:
        """Data that is not JSON in any link: an error, and nothing of the chain is stored."""
        goal = await run_plan(store, await claimed(store), ["a", "b"])
        start = transitions.step_started(goal, goal.steps[0], NOW, lease="m1")
        bad = transitions.step_completed(start.goal, start.steps[0], object(), NOW, lease="m1")
        with pytest.raises((StorageError, TypeError)):
            await store.commit(transitions.chain(start, bad))
        assert await store.get_goal(goal.id) == goal

    def test_chains_are_of_one_goal(self) -> None:
        first, other = new_goal(), new_goal()
        with pytest.raises(ValueError, match="same goal"):
            transitions.chain(transitions.cancel(first, NOW), transitions.cancel(other, NOW))


class TestFences:
    async def test_lease_held_by_nobody_is_lost(self, store: Storage) -> None:
        """A leased write to a goal nobody holds is refused with LeaseLost."""
        goal = await create(store)
        with pytest.raises(LeaseLost):
            await store.commit(transitions.decomposing(goal, NOW, lease="m1"))

    async def test_lease_held_by_another_is_lost(self, store: Storage) -> None:
        """A leased write from a manager other than the holder is refused and changes nothing."""
        goal = await claimed(store, owner="m1")
        with pytest.raises(LeaseLost):
            await store.commit(
                transitions.decomposed(goal, (StepSpec("a"),), NOW, lease="intruder")
            )
        assert await store.get_goal(goal.id) == goal
        assert len(await store.read_events(goal.id)) == 1

    async def test_lease_after_terminal_is_lost(self, store: Storage) -> None:
        """Once a goal ended, even its last holder's leased writes are refused."""
        goal = await claimed(store)
        done = await apply(store, transitions.complete(goal, "ok", NOW, lease="m1"))
        with pytest.raises(LeaseLost):
            await store.commit(transitions.fail(done, ErrorInfo("x", "y"), NOW, lease="m1"))
        assert await store.get_goal(goal.id) == done

    async def test_released_lease_is_lost(self, store: Storage) -> None:
        """After `release_leases`, the former holder can no longer write."""
        goal = await claimed(store)
        await store.release_leases("m1", [goal.id])
        with pytest.raises(LeaseLost):
            await store.commit(transitions.decomposing(goal, NOW, lease="m1"))

    async def test_stale_version_conflicts(self, store: Storage) -> None:
        """A version-fenced write (cancel) against a goal that moved on is a GoalConflict."""
        goal = await claimed(store)
        stale = goal
        await apply(store, transitions.decomposed(goal, (StepSpec("a"),), NOW, lease="m1"))
        with pytest.raises(GoalConflict):
            await store.commit(transitions.cancel(stale, NOW))
        current = await store.get_goal(goal.id)
        assert current is not None
        assert current.status == "active"

    async def test_current_version_cancels(self, store: Storage) -> None:
        """A cancel at the current version ends the goal and cancels its unfinished steps."""
        goal = await run_plan(store, await claimed(store), ["a", "b"])
        goal = await apply(store, transitions.step_started(goal, goal.steps[0], NOW, lease="m1"))
        (event,) = await store.commit(transitions.cancel(goal, NOW + 9))
        assert (event.id, event.type) == (4, "goal.cancelled")
        after = await store.get_goal(goal.id)
        assert after is not None
        assert (after.status, after.phase, after.completed_at) == (
            "cancelled",
            "cancelled",
            NOW + 9,
        )
        assert [s.status for s in after.steps] == ["cancelled", "cancelled"]

    async def test_unknown_goal_is_not_found(self, store: Storage) -> None:
        """Committing to a goal that does not exist is GoalNotFound."""
        with pytest.raises(GoalNotFound):
            await store.commit(transitions.decomposing(new_goal(), NOW, lease="m1"))
        with pytest.raises(GoalNotFound):
            await store.commit(transitions.cancel(new_goal(), NOW))

    async def test_unfenced_write_is_applied(self, store: Storage) -> None:
        """A transition with neither lease nor version (fail outside the engine) is applied."""
        goal = await create(store)
        await store.commit(transitions.fail(goal, ErrorInfo("boom", "it broke"), NOW, lease=None))
        after = await store.get_goal(goal.id)
        assert after is not None
        assert after.status == "failed"
        assert after.error == ErrorInfo("boom", "it broke")

    async def test_terminal_write_releases_lease(self, store: Storage) -> None:
        """The write that ends a goal gives its lease up: it can no longer be renewed."""
        goal = await claimed(store)
        assert await store.renew_leases("m1", [goal.id], ttl=60) == {goal.id}
        await store.commit(transitions.fail(goal, ErrorInfo("x", "y"), NOW, lease="m1"))
        assert await store.renew_leases("m1", [goal.id], ttl=60) == set()


class TestSteps:
    async def test_failed_step_keeps_error_and_attempts(self, store: Storage) -> None:
        """A failed attempt stores its error; a retry waits as pending with its attempt count."""
        goal = await run_plan(store, await claimed(store), ["a"])
        goal = await apply(store, transitions.step_started(goal, goal.steps[0], NOW, lease="m1"))
        error = ErrorInfo("provider_error", "rate limited")
        goal = await apply(
            store, transitions.step_failed(goal, goal.steps[0], error, True, NOW + 1, lease="m1")
        )
        (step,) = goal.steps
        assert (step.status, step.attempts, step.error) == ("pending", 1, error)
        assert step.started_at == NOW
        assert step.completed_at == NOW + 1
        (event,) = await store.read_events(goal.id, after=3)
        assert event.data["error"] == error.to_dict()
        assert event.data["will_retry"] is True


class TestUsage:
    """Budgets and token usage are stored with the goal and its steps, and add up."""

    async def test_budget_is_stored_and_read_back_everywhere(self, store: Storage) -> None:
        goal = await claimed(store, max_tokens=1234)
        assert goal.max_tokens == 1234
        assert (await create(store)).max_tokens is None
        page = await store.list_goals()
        assert [g.max_tokens for g in page.items] == [None, 1234]
        assert [g.max_tokens for g in await store.goals_by_workflow(goal.workflow_id)] == [1234]
        (event,) = await store.read_events(goal.id)
        assert event.data["max_tokens"] == 1234

    async def test_usage_adds_up_over_planning_and_attempts(self, store: Storage) -> None:
        goal = await claimed(store, max_tokens=1000)
        assert goal.usage == Usage()
        goal = await apply(store, transitions.decomposing(goal, NOW, lease="m1"))
        goal = await apply(
            store,
            transitions.decomposed(goal, (StepSpec("a"),), NOW, lease="m1", usage=Usage(10, 5)),
        )
        assert goal.usage == Usage(10, 5)
        goal = await apply(store, transitions.step_started(goal, goal.steps[0], NOW, lease="m1"))
        error = ErrorInfo("step_error", "malformed")
        goal = await apply(
            store,
            transitions.step_failed(
                goal, goal.steps[0], error, True, NOW, lease="m1", usage=Usage(3, 2)
            ),
        )
        goal = await apply(store, transitions.step_started(goal, goal.steps[0], NOW, lease="m1"))
        goal = await apply(
            store,
            transitions.step_completed(
                goal, goal.steps[0], "r", NOW, lease="m1", usage=Usage(7, 11)
            ),
        )
        assert goal.steps[0].usage == Usage(10, 13)
        assert goal.usage == Usage(20, 18)
        assert goal.usage.total_tokens == 38 and goal.tokens_left == 962
        [listed] = (await store.list_goals()).items
        assert listed.usage == Usage(20, 18)
        events = await store.read_events(goal.id)
        usage = {e.type: e.data.get("usage") for e in events}
        assert usage["goal.decomposed"] == Usage(10, 5).to_dict()
        assert usage["goal.step_failed"] == Usage(3, 2).to_dict()
        assert usage["goal.step_completed"] == {
            "input_tokens": 7,
            "output_tokens": 11,
            "total_tokens": 18,
        }
        goal = await apply(
            store,
            transitions.fail(
                goal, ErrorInfo("budget_exceeded", "x"), NOW, lease="m1", usage=Usage(1, 1)
            ),
        )
        assert goal.usage == Usage(21, 19)


class TestListing:
    @pytest.fixture
    async def goals(self, store: Storage) -> list[Goal]:
        """Six goals, oldest first: owners, tags and one completed among them."""
        made = [
            await create(store, owner="alice", tags=("qa",)),
            await create(store, owner="bob", tags=("qa", "docs")),
            await create(store, owner="alice", tags=("docs",)),
            await create(store, owner="alice", tags=("qa",)),
            await create(store, owner="bob"),
            await create(store, owner="alice", tags=("qa", "docs")),
        ]
        await store.claim_goals("m1", ttl=60, limit=10)
        made[3] = await apply(store, transitions.complete(made[3], "done", NOW, lease="m1"))
        return [attrs.evolve(g, steps=()) for g in made]

    async def test_all_newest_first(self, store: Storage, goals: list[Goal]) -> None:
        """Without filters every goal comes back, newest first, without steps."""
        page = await store.list_goals()
        assert page.items == tuple(reversed(goals))
        assert (page.total, page.limit, page.offset) == (6, 50, 0)

    @pytest.mark.parametrize(
        ("filters", "expected"),
        [
            ({"owner": "alice"}, [5, 3, 2, 0]),
            ({"owner": "carol"}, []),
            ({"status": "completed"}, [3]),
            ({"status": "active"}, [5, 4, 2, 1, 0]),
            ({"tag": "qa"}, [5, 3, 1, 0]),
            ({"tag": "docs", "owner": "bob"}, [1]),
            ({"tag": "qa", "status": "active", "owner": "alice"}, [5, 0]),
            ({"owner": "alice", "status": "completed"}, [3]),
            ({"tag": "nope"}, []),
        ],
    )
    async def test_filters_combine(
        self, store: Storage, goals: list[Goal], filters: dict[str, Any], expected: list[int]
    ) -> None:
        """Each filter given narrows the listing; the total counts every match."""
        page = await store.list_goals(**filters)
        assert page.items == tuple(goals[i] for i in expected)
        assert page.total == len(expected)

    async def test_offset_and_limit_page_through(self, store: Storage, goals: list[Goal]) -> None:
        """Offset and limit cut a page out of the ordered matches; total stays the full count."""
        first = await store.list_goals(owner="alice", limit=2)
        second = await store.list_goals(owner="alice", limit=2, offset=2)
        beyond = await store.list_goals(owner="alice", limit=2, offset=4)
        assert first.items == (goals[5], goals[3])
        assert second.items == (goals[2], goals[0])
        assert beyond.items == ()
        assert (first.total, second.total, beyond.total) == (4, 4, 4)
        assert (second.limit, second.offset) == (2, 2)

    async def test_cursor_pages_through(self, store: Storage, goals: list[Goal]) -> None:
        """A page's next_cursor gives the page below it; the last page has none."""
        first = await store.list_goals(owner="alice", limit=2)
        assert first.next_cursor is not None
        second = await store.list_goals(owner="alice", limit=2, cursor=first.next_cursor)
        assert first.items == (goals[5], goals[3])
        assert second.items == (goals[2], goals[0])
        assert (second.total, second.limit, second.offset, second.next_cursor) == (4, 2, None, None)

    @pytest.mark.parametrize("limit", [1, 2, 5, 6, 7])
    async def test_next_cursor_only_when_more_follow(
        self, store: Storage, goals: list[Goal], limit: int
    ) -> None:
        """Offset pages carry a cursor too, None exactly when no goal follows the page."""
        for offset in range(7):
            page = await store.list_goals(limit=limit, offset=offset)
            assert (page.next_cursor is None) == (offset + limit >= len(goals)), offset
            if page.next_cursor is not None:
                rest = await store.list_goals(limit=50, cursor=page.next_cursor)
                assert rest.items == tuple(reversed(goals))[offset + limit :]

    @pytest.mark.parametrize(
        "filters",
        [
            {},
            {"owner": "alice"},
            {"status": "active"},
            {"tag": "qa"},
            {"tag": "docs", "owner": "bob"},
            {"tag": "qa", "status": "active", "owner": "alice"},
            {"owner": "alice", "status": "completed"},
            {"tag": "nope"},
        ],
    )
    async def test_cursor_walk_equals_the_listing(
        self, store: Storage, goals: list[Goal], filters: dict[str, Any]
    ) -> None:
        """Walking one goal at a time by cursor gives the listing, whatever the filters."""
        whole = await store.list_goals(**filters)
        walked: list[Goal] = []
        cursor = None
        while True:
            page = await store.list_goals(**filters, limit=1, cursor=cursor)
            walked.extend(page.items)
            assert page.total == whole.total
            cursor = page.next_cursor
            if cursor is None:
                break
        assert tuple(walked) == whole.items

    async def test_cursor_is_stable_under_inserts(self, store: Storage, goals: list[Goal]) -> None:
        """Goals created after a page neither repeat on the next one nor push one off it."""
        first = await store.list_goals(limit=2)
        newer = [await create(store) for _ in range(3)]
        second = await store.list_goals(limit=2, cursor=first.next_cursor)
        assert second.items == (goals[3], goals[2])
        assert second.total == len(goals) + len(newer)
        by_offset = await store.list_goals(limit=2, offset=2)
        assert by_offset.items != second.items  # what a cursor is for

    @pytest.mark.parametrize(
        "cursor", ["", "nope", "AAAAAAAAAAAAAAAA", "x" * 100, encode_cursor(2**63)]
    )
    async def test_bad_cursor_is_invalid(
        self, store: Storage, goals: list[Goal], cursor: str
    ) -> None:
        with pytest.raises(InvalidGoal) as caught:
            await store.list_goals(cursor=cursor)
        assert caught.value.field == "cursor"


class TestTotals:
    """`total` counts the goals matching every filter, through every change of status."""

    async def test_totals_follow_every_ending(self, store: Storage) -> None:
        owners, tags = ("alice", "bob"), (("qa",), ("qa", "docs"), ())
        for i in range(8):
            await create(store, owner=owners[i % 2], tags=tags[i % 3])
        made = await store.claim_goals("m1", ttl=60, limit=10)
        await assert_totals(store)
        await apply(store, transitions.complete(made[0], "done", NOW, lease="m1"))
        await apply(store, transitions.fail(made[1], ErrorInfo("x", "y"), NOW, lease="m1"))
        await apply(store, transitions.cancel(made[2], NOW))
        goal = await run_plan(store, made[3], ["a", "b"])
        goal = await apply(store, transitions.step_started(goal, goal.steps[0], NOW, lease="m1"))
        await assert_totals(store)
        await apply(store, transitions.complete(goal, "done", NOW, lease="m1"))
        await apply(store, transitions.cancel(made[4], NOW))
        await assert_totals(store)
        page = await store.list_goals(status="cancelled", tag="qa")
        assert page.total == len(page.items) == 1  # made[4]; made[2] has no tag


async def assert_totals(store: Storage) -> None:
    """Every combination of filters (owner, status, tag, each or not) totals what it lists."""
    everything = (await store.list_goals(limit=1000)).items
    owners = {g.owner for g in everything} | {"nobody"}
    tags = {t for g in everything for t in g.tags} | {"none"}
    for owner in [None, *owners]:
        for status in [None, "active", "completed", "failed", "cancelled"]:
            for tag in [None, *tags]:
                expected = sum(
                    1
                    for g in everything
                    if owner in (None, g.owner)
                    and status in (None, g.status)
                    and (tag is None or tag in g.tags)
                )
                page = await store.list_goals(owner=owner, status=status, tag=tag, limit=1)
                assert page.total == expected, (owner, status, tag)


class TestByWorkflow:
    async def test_finds_goal_of_workflow(self, store: Storage) -> None:
        """A workflow id maps to its goal, without steps; unknown ids map to nothing."""
        goal = await run_plan(store, await claimed(store), ["a"])
        await create(store)
        assert await store.goals_by_workflow(goal.workflow_id) == [attrs.evolve(goal, steps=())]
        assert await store.goals_by_workflow("wf-missing") == []


class TestClaim:
    async def test_oldest_first_up_to_limit(self, store: Storage) -> None:
        """Claims take active goals in creation order, at most `limit`, with their steps."""
        made = [await create(store) for _ in range(4)]
        first = await store.claim_goals("m1", ttl=60, limit=2)
        assert [g.id for g in first] == [made[0].id, made[1].id]
        second = await store.claim_goals("m2", ttl=60, limit=5)
        assert [g.id for g in second] == [made[2].id, made[3].id]
        assert await store.claim_goals("m3", ttl=60, limit=5) == []
        assert await store.claim_goals("m3", ttl=60, limit=0) == []

    async def test_a_goal_created_leased_is_not_claimable(self, store: Storage) -> None:
        """`create_goal(lease_owner=…)` stores the goal leased, as a claim would have."""
        goal = new_goal()
        await store.create_goal(transitions.create(goal), lease_owner="m1", lease_ttl=60)
        assert await store.claim_goals("m2", ttl=60, limit=5) == []
        assert await store.renew_leases("m1", [goal.id], ttl=60) == {goal.id}
        stored = await store.get_goal(goal.id)
        assert stored is not None
        await store.commit(transitions.decomposing(stored, NOW, lease="m1"))
        with pytest.raises(LeaseLost):
            await store.commit(transitions.decomposing(stored, NOW, lease="m2"))

    async def test_returns_goals_with_steps(self, store: Storage) -> None:
        """A claimed goal comes back as `get_goal` gives it, steps included."""
        goal = await run_plan(store, await claimed(store), ["a", "b"])
        await store.release_leases("m1", [goal.id])
        (got,) = await store.claim_goals("m2", ttl=60, limit=1)
        assert got == goal
        assert len(got.steps) == 2

    async def test_exclude_skips_goals(self, store: Storage) -> None:
        """Goals in `exclude` are not claimed, even when free."""
        a, b = await create(store), await create(store)
        got = await store.claim_goals("m1", ttl=60, limit=5, exclude=[a.id])
        assert [g.id for g in got] == [b.id]

    async def test_skips_unexpired_lease_takes_expired(self, store: Storage) -> None:
        """A goal leased to another manager is skipped until its lease expires, then taken."""
        goal = await create(store)
        assert len(await store.claim_goals("m1", ttl=0.05, limit=1)) == 1
        assert await store.claim_goals("m2", ttl=60, limit=1) == []
        await anyio.sleep(0.1)
        (taken,) = await store.claim_goals("m2", ttl=60, limit=1)
        assert taken.id == goal.id
        with pytest.raises(LeaseLost):
            await store.commit(transitions.decomposing(goal, NOW, lease="m1"))
        await store.commit(transitions.decomposing(goal, NOW, lease="m2"))

    async def test_skips_terminal_goals(self, store: Storage) -> None:
        """Completed, failed and cancelled goals are never claimed."""
        done = await claimed(store)
        await store.commit(transitions.complete(done, None, NOW, lease="m1"))
        failed = await create(store)
        await store.commit(transitions.fail(failed, ErrorInfo("x", "y"), NOW, lease=None))
        cancelled = await create(store)
        await store.commit(transitions.cancel(cancelled, NOW))
        assert await store.claim_goals("m2", ttl=60, limit=10) == []


class TestRecoveries:
    """`recoveries` counts takeovers of expired leases in a row, and progress resets it."""

    async def test_expired_lease_counts_released_lease_does_not(self, store: Storage) -> None:
        """A fresh claim and a claim after release count nothing; one after expiry counts 1."""
        goal = await create(store)
        (got,) = await store.claim_goals("m1", ttl=60, limit=1)
        assert got.recoveries == 0
        await store.release_leases("m1", [goal.id])
        (got,) = await store.claim_goals("m2", ttl=0.05, limit=1)
        assert got.recoveries == 0
        await anyio.sleep(0.1)
        (got,) = await store.claim_goals("m3", ttl=0.05, limit=1)
        assert got.recoveries == 1
        await anyio.sleep(0.1)
        (got,) = await store.claim_goals("m4", ttl=60, limit=1)
        assert got.recoveries == 2
        stored = await store.get_goal(goal.id)
        assert stored is not None and stored.recoveries == 2

    async def test_commits_keep_it_and_progress_resets_it(self, store: Storage) -> None:
        """A step start keeps the count; a decomposition or a completed step sets it to 0."""
        goal = await claimed(store, owner="m1")
        goal = await apply(store, transitions.decomposing(goal, NOW, lease="m1"))
        await store.release_leases("m1", [goal.id])
        (goal,) = await store.claim_goals("m2", ttl=0.05, limit=1)
        await anyio.sleep(0.1)  # m2 "dies": its lease runs out
        (goal,) = await store.claim_goals("m3", ttl=60, limit=1)
        assert goal.recoveries == 1
        plan = tuple(StepSpec(t) for t in ("a", "b"))
        goal = await apply(store, transitions.decomposed(goal, plan, NOW, lease="m3"))
        assert goal.recoveries == 0
        await store.release_leases("m3", [goal.id])
        (goal,) = await store.claim_goals("m4", ttl=0.05, limit=1)
        await anyio.sleep(0.1)
        (goal,) = await store.claim_goals("m5", ttl=60, limit=1)
        step = goal.steps[0]
        goal = await apply(store, transitions.step_started(goal, step, NOW, lease="m5"))
        assert goal.recoveries == 1
        goal = await apply(
            store,
            transitions.step_completed(goal, goal.steps[0], "ok", NOW, lease="m5"),
        )
        assert goal.recoveries == 0


class TestLeases:
    async def test_renew_only_held(self, store: Storage) -> None:
        """Renewal extends and reports only the leases the owner still holds."""
        mine, theirs, free = await create(store), await create(store), await create(store)
        await store.claim_goals("m1", ttl=60, limit=1)
        await store.claim_goals("m2", ttl=60, limit=1)
        held = await store.renew_leases("m1", [mine.id, theirs.id, free.id, "goal-x"], ttl=60)
        assert held == {mine.id}

    async def test_renewal_keeps_goal_from_others(self, store: Storage) -> None:
        """A renewed lease outlives its first expiry, so no other manager takes the goal."""
        goal = await create(store)
        await store.claim_goals("m1", ttl=0.05, limit=1)
        assert await store.renew_leases("m1", [goal.id], ttl=60) == {goal.id}
        await anyio.sleep(0.1)
        assert await store.claim_goals("m2", ttl=60, limit=1) == []

    async def test_release_frees_goal_at_once(self, store: Storage) -> None:
        """A released goal can be claimed by another manager straight away."""
        goal = await claimed(store, owner="m1")
        await store.release_leases("m1", [goal.id, "goal-x"])
        assert [g.id for g in await store.claim_goals("m2", ttl=60, limit=1)] == [goal.id]

    async def test_release_by_non_holder_is_ignored(self, store: Storage) -> None:
        """Releasing a lease someone else holds leaves it with them."""
        goal = await claimed(store, owner="m1")
        await store.release_leases("m2", [goal.id])
        assert await store.claim_goals("m2", ttl=60, limit=1) == []
        assert await store.renew_leases("m1", [goal.id], ttl=60) == {goal.id}


class TestIdempotencyKeys:
    """A key used twice by one owner maps to one goal; its fingerprint must match."""

    async def test_repeated_key_returns_the_first_goals_created_event(self, store: Storage) -> None:
        """The second create writes nothing and answers with event 1 of the first goal."""
        first, second = new_goal(), new_goal()
        event = await store.create_goal(
            transitions.create(first), idempotency_key="k", fingerprint="f"
        )
        again = await store.create_goal(
            transitions.create(second), idempotency_key="k", fingerprint="f"
        )
        assert (again.goal_id, again.id, again.type) == (first.id, 1, "goal.created")
        assert again == event
        assert await store.get_goal(second.id) is None
        assert (await store.list_goals()).total == 1

    async def test_same_key_with_another_fingerprint_conflicts(self, store: Storage) -> None:
        """Reusing a key for a different request is a GoalConflict, and nothing is written."""
        await store.create_goal(
            transitions.create(new_goal()), idempotency_key="k", fingerprint="f"
        )
        other = new_goal()
        with pytest.raises(GoalConflict, match="Idempotency-Key"):
            await store.create_goal(transitions.create(other), idempotency_key="k", fingerprint="g")
        assert await store.get_goal(other.id) is None

    async def test_keys_belong_to_their_owner(self, store: Storage) -> None:
        """Two owners using the same key get a goal each."""
        alice, bob = new_goal(owner="alice"), new_goal(owner="bob")
        a = await store.create_goal(transitions.create(alice), idempotency_key="k", fingerprint="f")
        b = await store.create_goal(transitions.create(bob), idempotency_key="k", fingerprint="f")
        assert (a.goal_id, b.goal_id) == (alice.id, bob.id)

    async def test_concurrent_creates_with_one_key_make_one_goal(self, store: Storage) -> None:
        """Ten racing creates with one key store exactly one goal, and all see it."""
        answers: list[str] = []

        async def one() -> None:
            event = await store.create_goal(
                transitions.create(new_goal()), idempotency_key="race", fingerprint="f"
            )
            answers.append(event.goal_id)

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
        assert len(set(answers)) == 1
        assert (await store.list_goals()).total == 1

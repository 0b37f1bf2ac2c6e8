"""The storage protocol every backend implements, and nothing backend-specific.

The engine speaks to storage in intents (create a goal, commit a transition, claim goals,
renew leases), never in SQL. A backend is found through the `goalkit_storage(url)` hook;
the built-in ones are `goalkit.storage.sqlite` (``sqlite:///path.db``) and
`goalkit.storage.memory` (``memory://``). Every backend must pass the shared contract suite
in ``tests/test_storage_contract.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from goalkit.models import Event, Goal, Page, Status
from goalkit.transitions import Transition

__all__ = ["KEY_REUSED", "Storage"]

KEY_REUSED = "this Idempotency-Key was already used with a different request"
"""The message of the `GoalConflict` every backend raises for a reused idempotency key."""


@runtime_checkable
class Storage(Protocol):
    """Durable home of goals, their steps, their event logs and their leases.

    Rules every backend keeps:

    * `create_goal` and `commit` are each one transaction: the goal row, the steps and the
      event are written together or not at all; the event is numbered one more than the
      goal's newest event, so each goal's log runs 1, 2, 3 … without gaps.
    * `commit` refuses a fenced write: `LeaseLost` when `transition.lease` is set and another
      owner (or nobody) holds the goal's lease, `GoalConflict` when `transition.version` is set
      and the goal has moved past it, `GoalNotFound` for an unknown goal. A write that makes
      the goal terminal releases its lease.
    * Methods may block on I/O only off the event loop thread.
    """

    async def open(self) -> None:
        """Connect and migrate the schema to the newest version."""

    async def close(self) -> None:
        """Release connections; the store stays as it is on disk."""

    async def create_goal(
        self, transition: Transition, *, idempotency_key: str | None = None, fingerprint: str = ""
    ) -> Event:
        """Insert a new goal (`transitions.create`) and return its `goal.created` event.

        With an `idempotency_key`, the key is stored for the goal's owner in the same
        transaction. If that owner already used the key, nothing is written and the
        `goal.created` event of the earlier goal is returned instead (its `goal_id` tells the
        caller); `GoalConflict` if the earlier request had another `fingerprint`.
        """

    async def commit(self, transition: Transition) -> Event | None:
        """Apply one transition atomically; return its event (None when it has none)."""

    async def get_goal(self, goal_id: str, *, steps: bool = True) -> Goal | None:
        """The goal with its steps (or without, when `steps` is False), or None."""

    async def list_goals(
        self,
        *,
        owner: str | None = None,
        status: Status | None = None,
        tag: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page:
        """Goals matching every filter given, newest first, without steps."""

    async def goals_by_workflow(self, workflow_id: str) -> list[Goal]:
        """The goals a workflow id maps to (one, today), through an index."""

    async def read_events(self, goal_id: str, *, after: int = 0, limit: int = 1000) -> list[Event]:
        """Stored events of a goal numbered above `after`, oldest first."""

    async def claim_goals(
        self, owner: str, *, ttl: float, limit: int, exclude: Iterable[str] = ()
    ) -> list[Goal]:
        """Lease up to `limit` active goals that nobody holds (or whose lease expired).

        Oldest first, so waiting goals start in creation order. Returns them with steps.
        Claiming a goal whose lease *expired* (rather than was released) adds one to its
        `recoveries`; a transition's goal row writes it back (`decomposed` and
        `step_completed` reset it to 0).
        """

    async def renew_leases(self, owner: str, goal_ids: Iterable[str], *, ttl: float) -> set[str]:
        """Extend the leases `owner` still holds among `goal_ids`; return those ids."""

    async def release_leases(self, owner: str, goal_ids: Iterable[str]) -> None:
        """Give up leases so another manager (or the next start) can resume at once."""

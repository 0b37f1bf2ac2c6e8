"""The storage protocol every backend implements, and nothing backend-specific.

The engine speaks to storage in intents (create a goal, commit a transition, claim goals,
renew leases), never in SQL. A backend is found through the `goalkit_storage(url)` hook;
the built-in ones are `goalkit.storage.sqlite` (``sqlite:///path.db``) and
`goalkit.storage.memory` (``memory://``). Every backend must pass the shared contract suite
in ``tests/test_storage_contract.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, Protocol, TypeVar, runtime_checkable

from goalkit.errors import GoalkitError, StorageError
from goalkit.models import Event, Goal, Page, Status
from goalkit.transitions import Transition

__all__ = ["KEY_REUSED", "Guarded", "Storage"]

T = TypeVar("T")

KEY_REUSED = "this Idempotency-Key was already used with a different request"
"""The message of the `GoalConflict` every backend raises for a reused idempotency key."""


@runtime_checkable
class Storage(Protocol):
    """Durable home of goals, their steps, their event logs and their leases.

    Rules every backend keeps:

    * `create_goal` and `commit` are each one transaction: the goal row, the steps and the
      event (every link's, for a chained transition) are written together or not at all;
      each event is numbered one more than the goal's newest event, so each goal's log runs
      1, 2, 3 … without gaps.
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
        self,
        transition: Transition,
        *,
        idempotency_key: str | None = None,
        fingerprint: str = "",
        lease_owner: str | None = None,
        lease_ttl: float = 0.0,
    ) -> Event:
        """Insert a new goal (`transitions.create`) and return its `goal.created` event.

        With an `idempotency_key`, the key is stored for the goal's owner in the same
        transaction. If that owner already used the key, nothing is written and the
        `goal.created` event of the earlier goal is returned instead (its `goal_id` tells the
        caller); `GoalConflict` if the earlier request had another `fingerprint`.
        With a `lease_owner`, the new goal is stored already leased to it for `lease_ttl`
        seconds, as `claim_goals` would lease it: the creating manager runs it at once,
        without a claim of its own.
        """

    async def commit(self, transition: Transition) -> tuple[Event, ...]:
        """Apply a transition and those chained after it (`Transition.then`) atomically.

        Each link's fences are checked after the links before it are applied; one refused
        link refuses the whole chain. Returns the events appended, in order (none for a
        state-only transition such as ``decomposing``).
        """

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
        cursor: str | None = None,
    ) -> Page:
        """Goals matching every filter given, newest first, without steps.

        `total` counts every goal that matches (whatever the page), and costs the same
        at any size of the store. With a `cursor` (a `Page.next_cursor` from an earlier
        call, `goalkit.models.decode_cursor` reads it) the page holds the goals created
        before that page's last goal, so goals created meanwhile neither repeat nor shift
        it; the page's `offset` is then None. `next_cursor` (`goalkit.models.encode_cursor`
        of the last goal's place) is None when no matching goal comes after the page.
        """

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


class Guarded:
    """A `Storage` that turns whatever else a backend raises into a `StorageError`.

    `GoalManager` wraps every backend in one, so a plugin's backend that lets a raw
    ``sqlite3.OperationalError`` (or any other exception) out still reaches callers as a
    `GoalkitError`, with the original as its ``__cause__``. `GoalkitError`s pass unchanged:
    `LeaseLost`, `GoalConflict` and `GoalNotFound` steer the engine.
    """

    def __init__(self, inner: Storage) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"Guarded({self.inner!r})"

    async def _call(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except GoalkitError:
            raise
        except Exception as exc:
            text = str(exc).strip().splitlines()
            detail = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
            raise StorageError(f"storage {name} failed: {detail}") from exc

    async def open(self) -> None:
        await self._call("open", self.inner.open)

    async def close(self) -> None:
        await self._call("close", self.inner.close)

    async def create_goal(
        self,
        transition: Transition,
        *,
        idempotency_key: str | None = None,
        fingerprint: str = "",
        lease_owner: str | None = None,
        lease_ttl: float = 0.0,
    ) -> Event:
        # Only the options in use are passed on, so a backend that takes none still serves
        # the calls that need none.
        options: dict[str, Any] = {}
        if idempotency_key is not None:
            options.update(idempotency_key=idempotency_key, fingerprint=fingerprint)
        if lease_owner is not None:
            options.update(lease_owner=lease_owner, lease_ttl=lease_ttl)
        return await self._call(
            "create_goal", partial(self.inner.create_goal, transition, **options)
        )

    async def commit(self, transition: Transition) -> tuple[Event, ...]:
        return await self._call("commit", partial(self.inner.commit, transition))

    async def get_goal(self, goal_id: str, *, steps: bool = True) -> Goal | None:
        return await self._call("get_goal", partial(self.inner.get_goal, goal_id, steps=steps))

    async def list_goals(
        self,
        *,
        owner: str | None = None,
        status: Status | None = None,
        tag: str | None = None,
        limit: int = 50,
        offset: int = 0,
        cursor: str | None = None,
    ) -> Page:
        # Backends written before cursors take none: one is passed only when given.
        paging: dict[str, Any] = {} if cursor is None else {"cursor": cursor}
        return await self._call(
            "list_goals",
            partial(
                self.inner.list_goals,
                owner=owner,
                status=status,
                tag=tag,
                limit=limit,
                offset=offset,
                **paging,
            ),
        )

    async def goals_by_workflow(self, workflow_id: str) -> list[Goal]:
        return await self._call(
            "goals_by_workflow", partial(self.inner.goals_by_workflow, workflow_id)
        )

    async def read_events(self, goal_id: str, *, after: int = 0, limit: int = 1000) -> list[Event]:
        return await self._call(
            "read_events", partial(self.inner.read_events, goal_id, after=after, limit=limit)
        )

    async def claim_goals(
        self, owner: str, *, ttl: float, limit: int, exclude: Iterable[str] = ()
    ) -> list[Goal]:
        return await self._call(
            "claim_goals",
            partial(self.inner.claim_goals, owner, ttl=ttl, limit=limit, exclude=exclude),
        )

    async def renew_leases(self, owner: str, goal_ids: Iterable[str], *, ttl: float) -> set[str]:
        return await self._call(
            "renew_leases", partial(self.inner.renew_leases, owner, goal_ids, ttl=ttl)
        )

    async def release_leases(self, owner: str, goal_ids: Iterable[str]) -> None:
        await self._call("release_leases", partial(self.inner.release_leases, owner, goal_ids))

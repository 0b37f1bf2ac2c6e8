"""``memory://``: a storage backend in process memory, with the same behaviour as SQLite.

For tests and throwaway runs. Each `MemoryStorage` (so each manager opened on ``memory://``)
has its own store, gone when the process ends. Every method runs without awaiting in the
middle, so on one event loop each is atomic, as a transaction would be.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

import attrs

from goalkit.errors import GoalConflict, GoalNotFound, LeaseLost, StorageError
from goalkit.hookspecs import hookimpl
from goalkit.models import Event, Goal, Page, Status, Step, decode_cursor, encode_cursor
from goalkit.storage import KEY_REUSED, Storage
from goalkit.transitions import Transition

__all__ = ["MemoryStorage"]


@attrs.define
class _Record:
    goal: Goal
    seq: int
    steps: dict[int, Step] = attrs.field(factory=dict)
    events: list[Event] = attrs.field(factory=list)
    lease_owner: str | None = None
    lease_expires: float = 0.0


class MemoryStorage:
    """A `Storage` kept in dictionaries."""

    def __init__(self) -> None:
        self._goals: dict[str, _Record] = {}
        self._by_workflow: dict[str, list[str]] = {}
        self._idempotency: dict[tuple[str, str], tuple[str, str]] = {}
        self._seq = 0

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def _record(self, goal_id: str) -> _Record:
        try:
            return self._goals[goal_id]
        except KeyError:
            raise GoalNotFound(goal_id) from None

    def _append(self, record: _Record, transition: Transition) -> Event | None:
        for step in transition.steps:
            record.steps[step.index] = step
        event = None
        last = record.goal.last_event_id
        if transition.event is not None:
            event = Event(
                id=last + 1,
                type=transition.event,
                goal_id=record.goal.id,
                workflow_id=record.goal.workflow_id,
                ts=round(time.time(), 3),
                # A JSON round trip, as SQLite does: the log never shares the caller's dict.
                data=json.loads(json.dumps(transition.data)),
            )
            record.events.append(event)
            last = event.id
        record.goal = attrs.evolve(transition.goal, last_event_id=last, steps=())
        if record.goal.done:
            record.lease_owner, record.lease_expires = None, 0.0
        return event

    async def create_goal(
        self,
        transition: Transition,
        *,
        idempotency_key: str | None = None,
        fingerprint: str = "",
        lease_owner: str | None = None,
        lease_ttl: float = 0.0,
    ) -> Event:
        goal = transition.goal
        if transition.event is None:
            raise StorageError("create_goal needs a transition with an event (transitions.create)")
        if goal.id in self._goals:
            raise GoalConflict(f"goal {goal.id!r} already exists")
        if idempotency_key is not None:
            key = (goal.owner, idempotency_key)
            earlier = self._idempotency.get(key)
            if earlier is not None:
                if earlier[1] != fingerprint:
                    raise GoalConflict(KEY_REUSED)
                return self._goals[earlier[0]].events[0]
            self._idempotency[key] = (goal.id, fingerprint)
        self._seq += 1
        record = _Record(goal=attrs.evolve(goal, last_event_id=0, steps=()), seq=self._seq)
        if lease_owner is not None:
            record.lease_owner, record.lease_expires = lease_owner, time.time() + lease_ttl
        self._goals[goal.id] = record
        self._by_workflow.setdefault(goal.workflow_id, []).append(goal.id)
        event = self._append(record, transition)
        assert event is not None  # checked above
        return event

    async def commit(self, transition: Transition) -> tuple[Event, ...]:
        record = self._record(transition.goal.id)
        links = transition.links()
        # Every link is checked before any is applied: a chain is written whole or not at all.
        last, status, holder = record.goal.last_event_id, record.goal.status, record.lease_owner
        for link in links:
            if link.lease is not None and (holder != link.lease or status != "active"):
                raise LeaseLost(f"lease on goal {record.goal.id!r} is no longer held")
            if link.version is not None and last != link.version:
                raise GoalConflict(f"goal {record.goal.id!r} changed meanwhile")
            json.dumps(link.data)  # not JSON: refused here, before any link is applied
            last += link.event is not None
            status = link.goal.status
            holder = None if link.goal.done else holder
        return tuple(event for link in links if (event := self._append(record, link)) is not None)

    def _full(self, record: _Record, steps: bool = True) -> Goal:
        if not steps:
            return record.goal
        return attrs.evolve(record.goal, steps=tuple(record.steps[i] for i in sorted(record.steps)))

    async def get_goal(self, goal_id: str, *, steps: bool = True) -> Goal | None:
        record = self._goals.get(goal_id)
        return None if record is None else self._full(record, steps)

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
        before = None if cursor is None else decode_cursor(cursor)
        matched = [
            r
            for r in sorted(self._goals.values(), key=lambda r: r.seq, reverse=True)
            if (owner is None or r.goal.owner == owner)
            and (status is None or r.goal.status == status)
            and (tag is None or tag in r.goal.tags)
        ]
        start, limit = max(offset, 0), max(limit, 0)
        rest = matched if before is None else [r for r in matched if r.seq < before]
        page = rest[start : start + limit]
        more = limit > 0 and len(rest) > start + limit
        return Page(
            items=tuple(r.goal for r in page),
            total=len(matched),
            limit=limit,
            offset=start if cursor is None else None,
            next_cursor=encode_cursor(page[-1].seq) if more else None,
        )

    async def goals_by_workflow(self, workflow_id: str) -> list[Goal]:
        return [self._goals[i].goal for i in self._by_workflow.get(workflow_id, [])]

    async def read_events(self, goal_id: str, *, after: int = 0, limit: int = 1000) -> list[Event]:
        record = self._goals.get(goal_id)
        if record is None:
            return []
        # Event n sits at index n - 1: no gaps by construction.
        return record.events[max(after, 0) : max(after, 0) + limit]

    async def claim_goals(
        self, owner: str, *, ttl: float, limit: int, exclude: Iterable[str] = ()
    ) -> list[Goal]:
        now = time.time()
        skip = set(exclude)
        claimed: list[Goal] = []
        for record in sorted(self._goals.values(), key=lambda r: r.seq):
            if len(claimed) >= limit:
                break
            if record.goal.done or record.goal.id in skip:
                continue
            if record.lease_owner is not None and record.lease_expires > now:
                continue
            if record.lease_owner is not None:  # expired, not released: its holder died
                record.goal = attrs.evolve(record.goal, recoveries=record.goal.recoveries + 1)
            record.lease_owner, record.lease_expires = owner, now + ttl
            claimed.append(self._full(record))
        return claimed

    async def renew_leases(self, owner: str, goal_ids: Iterable[str], *, ttl: float) -> set[str]:
        expires = time.time() + ttl
        held = set()
        for goal_id in goal_ids:
            record = self._goals.get(goal_id)
            if record is not None and record.lease_owner == owner:
                record.lease_expires = expires
                held.add(goal_id)
        return held

    async def release_leases(self, owner: str, goal_ids: Iterable[str]) -> None:
        for goal_id in goal_ids:
            record = self._goals.get(goal_id)
            if record is not None and record.lease_owner == owner:
                record.lease_owner, record.lease_expires = None, 0.0


@hookimpl
def goalkit_storage(url: str) -> Storage | None:
    """Serve ``memory://`` (a fresh, private store per manager)."""
    return MemoryStorage() if url == "memory://" else None

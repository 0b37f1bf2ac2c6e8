"""``sqlite:///path.db``: the durable storage backend, one SQLite file per store.

Deliberate design choices:

* Every SQLite call runs in a worker thread, one call at a time (`anyio.to_thread.run_sync`
  behind a `CapacityLimiter` of 1), so the event loop never waits on the disk and the single
  connection is never used by two threads at once. A cancelled caller still waits for its
  thread (anyio's default), so a transaction in flight always commits or rolls back whole.
* The connection runs in autocommit mode and writes open ``BEGIN IMMEDIATE`` themselves: the
  write lock is taken *before* the fences are read, so two managers sharing the file cannot
  interleave between the lease check and the write.
* WAL journal, ``busy_timeout`` 5 s, ``synchronous=NORMAL`` (a power cut may lose the newest
  commits, never corrupt the file); ``synchronous=FULL`` on request.
* The schema is versioned with sqlite-utils `Migrations` (table ``_sqlite_migrations``). All
  pending migrations run under one ``BEGIN IMMEDIATE`` (each in its own savepoint), so two
  processes opening a fresh file at once migrate it exactly once.
* ``goal_tags`` is keyed by ``(tag, goal seq)`` rather than goal id, so listing a tag newest
  first walks one index range without a sort.
* Creation fields (description, model, tags …) are written once by `create_goal`; `commit`
  updates the fields transitions change. JSON values come back as JSON gives them (a tuple
  stored as a result reads back as a list).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs

import anyio
import anyio.to_thread
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from goalkit.errors import GoalConflict, GoalNotFound, LeaseLost, StorageError
from goalkit.hookspecs import hookimpl
from goalkit.models import JSON, ErrorInfo, Event, Goal, Page, Status, Step, Usage
from goalkit.storage import KEY_REUSED, Storage
from goalkit.transitions import Transition

__all__ = ["MIGRATIONS", "SQLiteStorage"]

T = TypeVar("T")
Synchronous = Literal["NORMAL", "FULL"]

BUSY_TIMEOUT = 5.0
"""Seconds a write waits for another connection's write lock before failing."""

MIGRATIONS = Migrations("goalkit")
"""The schema history, oldest first; `SQLiteStorage.open` applies whatever is pending."""


@MIGRATIONS(name="0001_initial")
def _initial(db: Database) -> None:
    statements = [
        """CREATE TABLE goals (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            workflow_id TEXT NOT NULL,
            description TEXT NOT NULL,
            model TEXT NOT NULL,
            mode TEXT NOT NULL,
            max_steps INTEGER NOT NULL,
            max_retries INTEGER NOT NULL,
            tags TEXT NOT NULL,
            owner TEXT NOT NULL,
            status TEXT NOT NULL,
            phase TEXT NOT NULL,
            total_steps INTEGER NOT NULL,
            steps_completed INTEGER NOT NULL,
            current_step INTEGER,
            result TEXT,
            error TEXT,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            completed_at INTEGER,
            last_event_id INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_expires REAL NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX goals_owner_seq ON goals (owner, seq)",
        "CREATE INDEX goals_status_seq ON goals (status, seq)",
        "CREATE INDEX goals_workflow ON goals (workflow_id)",
        """CREATE TABLE goal_tags (
            tag TEXT NOT NULL,
            seq INTEGER NOT NULL REFERENCES goals (seq),
            PRIMARY KEY (tag, seq)
        ) WITHOUT ROWID""",
        """CREATE TABLE steps (
            goal_id TEXT NOT NULL REFERENCES goals (id),
            idx INTEGER NOT NULL,
            title TEXT NOT NULL,
            description TEXT,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            result TEXT,
            error TEXT,
            started_at INTEGER,
            completed_at INTEGER,
            PRIMARY KEY (goal_id, idx)
        ) WITHOUT ROWID""",
        """CREATE TABLE events (
            goal_id TEXT NOT NULL REFERENCES goals (id),
            id INTEGER NOT NULL,
            type TEXT NOT NULL,
            ts REAL NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (goal_id, id)
        ) WITHOUT ROWID""",
    ]
    for statement in statements:
        db.execute(statement)


@MIGRATIONS(name="0002_idempotency_keys")
def _idempotency_keys(db: Database) -> None:
    db.execute(
        """CREATE TABLE idempotency_keys (
            owner TEXT NOT NULL,
            key TEXT NOT NULL,
            goal_id TEXT NOT NULL REFERENCES goals (id),
            fingerprint TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (owner, key)
        ) WITHOUT ROWID"""
    )


USAGE_STATEMENTS = (
    "ALTER TABLE goals ADD COLUMN max_tokens INTEGER",
    "ALTER TABLE goals ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE goals ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE steps ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE steps ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0",
)


@MIGRATIONS(name="0003_usage")
def _usage(db: Database) -> None:
    # Token budgets and usage. Rows written before it read as no budget and no tokens used.
    for statement in USAGE_STATEMENTS:
        db.execute(statement)
@MIGRATIONS(name="0004_recoveries")
def _recoveries(db: Database) -> None:
    # Takeovers of a goal from a manager that died holding it, in a row without progress:
    # the engine fails a goal past `max_recoveries` instead of crash-looping on it.
    db.execute("ALTER TABLE goals ADD COLUMN recoveries INTEGER NOT NULL DEFAULT 0")


_GOAL_FIELDS = [
    "id",
    "workflow_id",
    "description",
    "model",
    "mode",
    "max_steps",
    "max_retries",
    "tags",
    "owner",
    "status",
    "phase",
    "total_steps",
    "steps_completed",
    "current_step",
    "result",
    "error",
    "created_at",
    "updated_at",
    "completed_at",
    "last_event_id",
    "max_tokens",
    "input_tokens",
    "output_tokens",
    "recoveries",
]
_GOAL_COLUMNS = ", ".join(_GOAL_FIELDS)
_SELECT_GOAL = f"SELECT {_GOAL_COLUMNS} FROM goals WHERE id = ?"
_SELECT_STEPS = (
    "SELECT idx, title, description, status, attempts, result, error, started_at, completed_at, "
    "input_tokens, output_tokens FROM steps WHERE goal_id = ? ORDER BY idx"
)
_INSERT_GOAL = """
    INSERT INTO goals (id, workflow_id, description, model, mode, max_steps, max_retries, tags,
        owner, status, phase, total_steps, steps_completed, current_step, result, error,
        created_at, updated_at, completed_at, max_tokens, input_tokens, output_tokens)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (id) DO NOTHING
"""
_UPSERT_STEP = """
    INSERT INTO steps (goal_id, idx, title, description, status, attempts, result, error,
        started_at, completed_at, input_tokens, output_tokens)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (goal_id, idx) DO UPDATE SET title = excluded.title,
        description = excluded.description, status = excluded.status,
        attempts = excluded.attempts, result = excluded.result, error = excluded.error,
        started_at = excluded.started_at, completed_at = excluded.completed_at,
        input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens
"""
_INSERT_EVENT = "INSERT INTO events (goal_id, id, type, ts, data) VALUES (?, ?, ?, ?, ?)"
_UPDATE_GOAL = """
    UPDATE goals SET status = ?, phase = ?, total_steps = ?, steps_completed = ?,
        current_step = ?, result = ?, error = ?, updated_at = ?, completed_at = ?,
        last_event_id = ?, input_tokens = ?, output_tokens = ?, recoveries = ?,
        lease_owner = CASE WHEN ? THEN NULL ELSE lease_owner END,
        lease_expires = CASE WHEN ? THEN 0 ELSE lease_expires END
    WHERE seq = ?
"""


def _dump(value: JSON) -> str:
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StorageError(f"value is not JSON-serialisable: {exc}") from None


def _dump_nullable(value: JSON) -> str | None:
    return None if value is None else _dump(value)


def _load(text: str | None) -> JSON:
    return None if text is None else json.loads(text)


def _load_error(text: str | None) -> ErrorInfo | None:
    return None if text is None else ErrorInfo.from_dict(json.loads(text))


def _dump_error(error: ErrorInfo | None) -> str | None:
    return None if error is None else _dump(error.to_dict())


def _goal(row: Mapping[str, Any], steps: tuple[Step, ...] = ()) -> Goal:
    return Goal(
        id=row["id"],
        workflow_id=row["workflow_id"],
        description=row["description"],
        model=row["model"],
        mode=row["mode"],
        max_steps=row["max_steps"],
        max_retries=row["max_retries"],
        tags=tuple(json.loads(row["tags"])),
        owner=row["owner"],
        status=row["status"],
        phase=row["phase"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        total_steps=row["total_steps"],
        steps_completed=row["steps_completed"],
        current_step=row["current_step"],
        result=_load(row["result"]),
        error=_load_error(row["error"]),
        completed_at=row["completed_at"],
        last_event_id=row["last_event_id"],
        steps=steps,
        max_tokens=row["max_tokens"],
        usage=Usage(row["input_tokens"], row["output_tokens"]),
        recoveries=row["recoveries"],
    )


def _step(row: Mapping[str, Any]) -> Step:
    return Step(
        index=row["idx"],
        title=row["title"],
        description=row["description"],
        status=row["status"],
        attempts=row["attempts"],
        result=_load(row["result"]),
        error=_load_error(row["error"]),
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        usage=Usage(row["input_tokens"], row["output_tokens"]),
    )


def _event(row: Mapping[str, Any], workflow_id: str) -> Event:
    return Event(
        id=row["id"],
        type=row["type"],
        goal_id=row["goal_id"],
        workflow_id=workflow_id,
        ts=row["ts"],
        data=json.loads(row["data"]),
    )


@contextmanager
def _transaction(conn: sqlite3.Connection, kind: str = "IMMEDIATE") -> Iterator[None]:
    """Run the block in one transaction: commit at the end, roll back on any exception."""
    conn.execute(f"BEGIN {kind}")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # If even ROLLBACK fails the connection is broken; the original error says more.
        with suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        raise


def _storage_error(path: str, exc: sqlite3.Error, busy_timeout: float) -> StorageError:
    message = str(exc)
    if "locked" in message or "busy" in message:
        message += f" (another connection held the write lock longer than {busy_timeout} s)"
    return StorageError(f"SQLite storage {path!r}: {message}")


class SQLiteStorage:
    """A `Storage` in one SQLite file, safe to share between processes on one machine."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "NORMAL",
        busy_timeout: float = BUSY_TIMEOUT,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise StorageError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        self.path = str(path)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._db: Database | None = None
        self._limiter = anyio.CapacityLimiter(1)

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.path!r}, synchronous={self.synchronous!r})"

    # -- plumbing ---------------------------------------------------------------------------

    def _error(self, exc: sqlite3.Error) -> StorageError:
        return _storage_error(self.path, exc, self.busy_timeout)

    def _call(self, work: Callable[[Database], T]) -> T:
        # Runs in the worker thread.
        if self._db is None:
            raise StorageError(f"SQLite storage {self.path!r} is not open")
        try:
            return work(self._db)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    async def _run(self, work: Callable[[Database], T]) -> T:
        return await anyio.to_thread.run_sync(self._call, work, limiter=self._limiter)

    def _connect(self) -> None:
        if self._db is not None:
            return
        try:
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=self.busy_timeout,
            )
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            db = Database(conn, execute_plugins=False)
            db.enable_wal()
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
            with _transaction(conn):
                MIGRATIONS.apply(db)
        except sqlite3.Error as exc:
            conn.close()
            raise self._error(exc) from exc
        except BaseException:
            conn.close()
            raise
        self._db = db

    def _disconnect(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    # -- Storage ----------------------------------------------------------------------------

    async def open(self) -> None:
        await anyio.to_thread.run_sync(self._connect, limiter=self._limiter)

    async def close(self) -> None:
        # Shielded: closing on the way out of a cancelled scope must still close.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._disconnect, limiter=self._limiter)

    async def create_goal(
        self, transition: Transition, *, idempotency_key: str | None = None, fingerprint: str = ""
    ) -> Event:
        goal = transition.goal
        if transition.event is None:
            raise StorageError("create_goal needs a transition with an event (transitions.create)")
        row = (
            goal.id,
            goal.workflow_id,
            goal.description,
            goal.model,
            goal.mode,
            goal.max_steps,
            goal.max_retries,
            _dump(list(goal.tags)),
            goal.owner,
            goal.status,
            goal.phase,
            goal.total_steps,
            goal.steps_completed,
            goal.current_step,
            _dump_nullable(goal.result),
            _dump_error(goal.error),
            goal.created_at,
            goal.updated_at,
            goal.completed_at,
            goal.max_tokens,
            goal.usage.input_tokens,
            goal.usage.output_tokens,
        )

        def work(db: Database) -> Event:
            conn = db.conn
            with _transaction(conn):
                if idempotency_key is not None:
                    earlier = conn.execute(
                        "SELECT goal_id, fingerprint FROM idempotency_keys "
                        "WHERE owner = ? AND key = ?",
                        (goal.owner, idempotency_key),
                    ).fetchone()
                    if earlier is not None:
                        if earlier[1] != fingerprint:
                            raise GoalConflict(KEY_REUSED)
                        return self._first_event(conn, earlier[0])
                cursor = conn.execute(_INSERT_GOAL, row)
                if cursor.rowcount == 0:
                    raise GoalConflict(f"goal {goal.id!r} already exists")
                if idempotency_key is not None:
                    conn.execute(
                        "INSERT INTO idempotency_keys (owner, key, goal_id, fingerprint, "
                        "created_at) VALUES (?, ?, ?, ?, ?)",
                        (goal.owner, idempotency_key, goal.id, fingerprint, goal.created_at),
                    )
                seq = cursor.lastrowid
                assert seq is not None
                conn.executemany(
                    "INSERT INTO goal_tags (tag, seq) VALUES (?, ?)",
                    [(tag, seq) for tag in goal.tags],
                )
                event = self._apply(conn, seq, goal.workflow_id, 0, transition)
            assert event is not None
            return event

        return await self._run(work)

    @staticmethod
    def _apply(
        conn: sqlite3.Connection, seq: int, workflow_id: str, last: int, transition: Transition
    ) -> Event | None:
        """Write the transition's steps, event and goal row; the caller holds the transaction."""
        goal = transition.goal
        conn.executemany(
            _UPSERT_STEP,
            [
                (
                    goal.id,
                    s.index,
                    s.title,
                    s.description,
                    s.status,
                    s.attempts,
                    _dump_nullable(s.result),
                    _dump_error(s.error),
                    s.started_at,
                    s.completed_at,
                    s.usage.input_tokens,
                    s.usage.output_tokens,
                )
                for s in transition.steps
            ],
        )
        event = None
        if transition.event is not None:
            event = Event(
                id=last + 1,
                type=transition.event,
                goal_id=goal.id,
                workflow_id=workflow_id,
                ts=round(time.time(), 3),
                data=transition.data,
            )
            conn.execute(
                _INSERT_EVENT, (goal.id, event.id, event.type, event.ts, _dump(transition.data))
            )
            last = event.id
        conn.execute(
            _UPDATE_GOAL,
            (
                goal.status,
                goal.phase,
                goal.total_steps,
                goal.steps_completed,
                goal.current_step,
                _dump_nullable(goal.result),
                _dump_error(goal.error),
                goal.updated_at,
                goal.completed_at,
                last,
                goal.usage.input_tokens,
                goal.usage.output_tokens,
                goal.recoveries,
                goal.done,
                goal.done,
                seq,
            ),
        )
        return event

    async def commit(self, transition: Transition) -> Event | None:
        goal_id = transition.goal.id

        def work(db: Database) -> Event | None:
            conn = db.conn
            with _transaction(conn):
                row = conn.execute(
                    "SELECT seq, workflow_id, status, last_event_id, lease_owner "
                    "FROM goals WHERE id = ?",
                    (goal_id,),
                ).fetchone()
                if row is None:
                    raise GoalNotFound(goal_id)
                seq, workflow_id, status, last, lease_owner = row
                if transition.lease is not None and (
                    lease_owner != transition.lease or status != "active"
                ):
                    raise LeaseLost(f"lease on goal {goal_id!r} is no longer held")
                if transition.version is not None and last != transition.version:
                    raise GoalConflict(f"goal {goal_id!r} changed meanwhile")
                return self._apply(conn, seq, workflow_id, last, transition)

        return await self._run(work)

    @staticmethod
    def _read_goal(db: Database, goal_id: str, steps: bool) -> Goal | None:
        rows = list(db.query(_SELECT_GOAL, [goal_id]))
        if not rows:
            return None
        step_rows = tuple(_step(r) for r in db.query(_SELECT_STEPS, [goal_id])) if steps else ()
        return _goal(rows[0], step_rows)

    async def get_goal(self, goal_id: str, *, steps: bool = True) -> Goal | None:
        def work(db: Database) -> Goal | None:
            with _transaction(db.conn, "DEFERRED"):
                return self._read_goal(db, goal_id, steps)

        return await self._run(work)

    async def list_goals(
        self,
        *,
        owner: str | None = None,
        status: Status | None = None,
        tag: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page:
        where: list[str] = []
        params: list[Any] = []
        if tag is not None:
            source = "goal_tags t JOIN goals g ON g.seq = t.seq"
            where.append("t.tag = ?")
            params.append(tag)
            order = "t.seq DESC"
        else:
            source, order = "goals g", "g.seq DESC"
        if owner is not None:
            where.append("g.owner = ?")
            params.append(owner)
        if status is not None:
            where.append("g.status = ?")
            params.append(status)
        condition = f"WHERE {' AND '.join(where)}" if where else ""
        columns = ", ".join(f"g.{name}" for name in _GOAL_FIELDS)
        select = f"SELECT {columns} FROM {source} {condition} ORDER BY {order} LIMIT ? OFFSET ?"
        count = f"SELECT count(*) AS n FROM {source} {condition}"

        def work(db: Database) -> Page:
            with _transaction(db.conn, "DEFERRED"):
                total = next(db.query(count, params))["n"]
                rows = db.query(select, [*params, max(limit, 0), max(offset, 0)])
                items = tuple(_goal(row) for row in rows)
            return Page(items=items, total=total, limit=limit, offset=offset)

        return await self._run(work)

    async def goals_by_workflow(self, workflow_id: str) -> list[Goal]:
        sql = f"SELECT {_GOAL_COLUMNS} FROM goals WHERE workflow_id = ? ORDER BY seq"

        def work(db: Database) -> list[Goal]:
            return [_goal(row) for row in db.query(sql, [workflow_id])]

        return await self._run(work)

    @staticmethod
    def _first_event(conn: sqlite3.Connection, goal_id: str) -> Event:
        row = conn.execute(
            "SELECT e.type, e.ts, e.data, g.workflow_id FROM events e "
            "JOIN goals g ON g.id = e.goal_id WHERE e.goal_id = ? AND e.id = 1",
            (goal_id,),
        ).fetchone()
        return Event(
            id=1,
            type=row[0],
            goal_id=goal_id,
            workflow_id=row[3],
            ts=row[1],
            data=json.loads(row[2]),
        )

    async def read_events(self, goal_id: str, *, after: int = 0, limit: int = 1000) -> list[Event]:
        def work(db: Database) -> list[Event]:
            with _transaction(db.conn, "DEFERRED"):
                found = list(db.query("SELECT workflow_id FROM goals WHERE id = ?", [goal_id]))
                if not found:
                    return []
                rows = db.query(
                    "SELECT goal_id, id, type, ts, data FROM events "
                    "WHERE goal_id = ? AND id > ? ORDER BY id LIMIT ?",
                    [goal_id, max(after, 0), max(limit, 0)],
                )
                return [_event(row, found[0]["workflow_id"]) for row in rows]

        return await self._run(work)

    async def claim_goals(
        self, owner: str, *, ttl: float, limit: int, exclude: Iterable[str] = ()
    ) -> list[Goal]:
        skip = _dump(sorted(set(exclude)))

        def work(db: Database) -> list[Goal]:
            conn = db.conn
            with _transaction(conn):
                now = time.time()
                candidates = conn.execute(
                    "SELECT seq, id FROM goals WHERE status = 'active' "
                    "AND (lease_owner IS NULL OR lease_expires <= ?) "
                    "AND id NOT IN (SELECT value FROM json_each(?)) "
                    "ORDER BY seq LIMIT ?",
                    (now, skip, max(limit, 0)),
                ).fetchall()
                # An expired lease (not a released one) means its holder died or froze.
                conn.executemany(
                    "UPDATE goals SET lease_owner = ?, lease_expires = ?, "
                    "recoveries = recoveries + (lease_owner IS NOT NULL) WHERE seq = ?",
                    [(owner, now + ttl, seq) for seq, _ in candidates],
                )
                claimed = [self._read_goal(db, goal_id, True) for _, goal_id in candidates]
            return [goal for goal in claimed if goal is not None]

        return await self._run(work)

    async def renew_leases(self, owner: str, goal_ids: Iterable[str], *, ttl: float) -> set[str]:
        ids = _dump(sorted(set(goal_ids)))

        def work(db: Database) -> set[str]:
            conn = db.conn
            with _transaction(conn):
                rows = conn.execute(
                    "UPDATE goals SET lease_expires = ? "
                    "WHERE lease_owner = ? AND id IN (SELECT value FROM json_each(?)) "
                    "RETURNING id",
                    (time.time() + ttl, owner, ids),
                ).fetchall()
            return {goal_id for (goal_id,) in rows}

        return await self._run(work)

    async def release_leases(self, owner: str, goal_ids: Iterable[str]) -> None:
        ids = _dump(sorted(set(goal_ids)))

        def work(db: Database) -> None:
            conn = db.conn
            with _transaction(conn):
                conn.execute(
                    "UPDATE goals SET lease_owner = NULL, lease_expires = 0 "
                    "WHERE lease_owner = ? AND id IN (SELECT value FROM json_each(?))",
                    (owner, ids),
                )

        await self._run(work)


def _parse_url(url: str) -> tuple[str, Synchronous] | None:
    """Split ``sqlite:///path.db?synchronous=FULL`` into (path, synchronous), None if not sqlite.

    As in SQLAlchemy, everything after ``sqlite:///`` is the path: ``sqlite:///goals.db`` is
    relative to the working directory, ``sqlite:////var/lib/goals.db`` is absolute.
    """
    if not url.startswith("sqlite:"):
        return None
    rest, _, query = url.removeprefix("sqlite:").partition("?")
    if not rest.startswith("///") or rest == "///":
        raise StorageError(
            f"SQLite URL {url!r} has no file path; write sqlite:///relative/path.db "
            "or sqlite:////absolute/path.db"
        )
    options: dict[str, list[str]] = parse_qs(query, keep_blank_values=True)
    unknown = set(options) - {"synchronous"}
    if unknown:
        raise StorageError(f"SQLite URL {url!r}: unknown option(s) {', '.join(sorted(unknown))}")
    values: Sequence[str] = options.get("synchronous", ["NORMAL"])
    synchronous = values[-1].upper()
    if synchronous == "NORMAL":
        return rest[3:], "NORMAL"
    if synchronous == "FULL":
        return rest[3:], "FULL"
    raise StorageError(f"SQLite URL {url!r}: synchronous must be NORMAL or FULL")


@hookimpl
def goalkit_storage(url: str) -> Storage | None:
    """Serve ``sqlite:///relative.db`` and ``sqlite:////absolute.db`` (``?synchronous=FULL``)."""
    parsed = _parse_url(url)
    if parsed is None:
        return None
    path, synchronous = parsed
    return SQLiteStorage(path, synchronous=synchronous)

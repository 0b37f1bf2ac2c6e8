"""``sqlite:///path.db``: the durable storage backend, one SQLite file per store.

Deliberate design choices:

* Group commit. All writes go to one writer thread that owns the write connection: it takes
  every write queued since its last commit (up to `MAX_BATCH`) and applies them in one
  ``BEGIN IMMEDIATE … COMMIT``, and only after that commit wakes the callers: one
  cross-thread wake-up per batch, not a thread hop per call. The commits of a batch are
  applied together (`_commit_many`: one read of their fences, one ``executemany`` per table);
  creations and lease writes, and the commits of a group SQLite refuses, each run in their
  own ``SAVEPOINT``. A write refused by its fence (`LeaseLost`, `GoalConflict`,
  `GoalNotFound`) or by bad data writes nothing and raises in its own caller; the rest of the
  batch commits. Writes apply in batch order, each seeing the ones before it: event numbers
  stay gapless. A chained transition (`Transition.then`) is applied whole or not at all.
  Lease renewals and releases jump the queue, so a heartbeat waits for one batch at most. A
  caller cancelled before the writer took its write drops it; one cancelled after waits for
  the batch, so a transaction is never split.
* The write lock is taken with ``BEGIN IMMEDIATE`` *before* the fences are read, so two
  managers sharing the file cannot interleave between the lease check and the write.
* Reads run on a second connection owned by a reader thread, batched the same way (one read
  transaction per batch), so they never queue behind writes: in WAL mode a reader sees the
  last commit and does not wait for the writer. The event loop's thread never touches a
  connection. Jobs reach each thread through a `queue.SimpleQueue` (its ``put`` wakes the
  thread directly), and each thread wakes its callers without waiting for the loop (a
  fire-and-forget call on asyncio and trio).
* Goal ids start with their creation time (`goalkit.models.new_goal_id`), so the rows of
  goals running together share pages; a goal's status is updated only by the write that
  changes it (`_UPDATE_STATE` otherwise), which spares the status indexes and the count
  triggers on every other write.
* WAL journal, ``busy_timeout`` 5 s, ``synchronous=NORMAL`` by default: a process crash
  (``kill -9``) loses nothing committed; a power cut or OS crash may lose the newest commits
  (never corrupt the file). ``sqlite:///path.db?synchronous=FULL`` syncs the WAL on every
  commit, so commits survive a power cut too (see the performance page for what it costs).
* The schema is versioned with sqlite-utils `Migrations` (table ``_sqlite_migrations``). All
  pending migrations run under one ``BEGIN IMMEDIATE`` (each in its own savepoint), so two
  processes opening a fresh file at once migrate it exactly once.
* ``goal_tags`` is keyed by ``(tag, goal seq)`` rather than goal id, so listing a tag newest
  first walks one index range without a sort.
* Listing totals are kept, not counted: ``goal_counts`` holds the number of goals per
  combination of the filters (owner, status, tag; migration ``0005_goal_counts``), kept by
  triggers on ``goals``. A count(*) grew with the matches (a first page cost 2.5x more with
  100,000 goals than with 1,000); triggers add no statement to the Python write path and
  roll back with their write (a refused write's savepoint takes its count change with it).
  A goal's tags live in its row (which the counts follow) and in ``goal_tags``; goalkit
  writes both once. Pages are asked for by offset or by cursor (below a ``seq``).
* Creation fields (description, model, tags …) are written once by `create_goal`; `commit`
  updates the fields transitions change. JSON values come back as JSON gives them (a tuple
  stored as a result reads back as a list).
"""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import parse_qs

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from goalkit.errors import GoalConflict, GoalkitError, GoalNotFound, LeaseLost, StorageError
from goalkit.hookspecs import hookimpl
from goalkit.models import (
    JSON,
    ErrorInfo,
    Event,
    Goal,
    Page,
    Status,
    Step,
    Usage,
    decode_cursor,
    encode_cursor,
)
from goalkit.storage import KEY_REUSED, Storage
from goalkit.transitions import Transition

__all__ = ["MIGRATIONS", "SQLiteStorage"]

T = TypeVar("T")
Synchronous = Literal["NORMAL", "FULL"]
Schedule = Callable[[Callable[[], None]], None]

BUSY_TIMEOUT = 5.0
"""Seconds a write waits for another connection's write lock before failing."""

MAX_BATCH = 512
"""Most writes the writer thread commits in one transaction."""

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


_COMBOS = (
    "(VALUES (0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), "
    "(0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1))"
)
"""Every filter combination `list_goals` takes, as (by owner, by status, by tag) flags."""


def _count_keys(goal: str, *, by_status: bool = False, source: str = "") -> str:
    """A SELECT of the `goal_counts` keys the goal row `goal` (``new``, ``old`` or a table
    alias in `source`) counts under: one per filter combination, one per tag for those with
    a tag; with `by_status`, only the combinations that filter by status.

    A key is ``json_array(owner, status, tag)`` with null for a filter not given: unambiguous
    whatever the owners and tags are, and one lookup for any combination.
    """
    combos = f"(SELECT * FROM {_COMBOS} WHERE column2)" if by_status else _COMBOS
    return (
        f"SELECT json_array(CASE WHEN c.column1 THEN {goal}.owner END, "
        f"CASE WHEN c.column2 THEN {goal}.status END, j.value) AS key "
        f"FROM {source}{combos} AS c LEFT JOIN json_each({goal}.tags) AS j ON c.column3 "
        "WHERE NOT c.column3 OR j.value IS NOT NULL"
    )


_ADD = "WHERE true ON CONFLICT (key) DO UPDATE SET n = n + excluded.n"
"""The tail of an ``INSERT INTO goal_counts … SELECT`` that adds to existing counts."""

COUNT_STATEMENTS = (
    """CREATE TABLE goal_counts (
        key TEXT PRIMARY KEY,
        n INTEGER NOT NULL
    ) WITHOUT ROWID""",
    f"""CREATE TRIGGER goal_counts_insert AFTER INSERT ON goals BEGIN
        INSERT INTO goal_counts (key, n) SELECT key, 1 FROM ({_count_keys("new")}) {_ADD};
    END""",
    # The one change goalkit makes: a goal's status (its owner and tags never change). Only
    # the combinations that filter by status move.
    f"""CREATE TRIGGER goal_counts_status AFTER UPDATE OF status ON goals
    WHEN old.status IS NOT new.status AND old.owner IS new.owner AND old.tags IS new.tags BEGIN
        UPDATE goal_counts SET n = n - 1 WHERE key IN ({_count_keys("old", by_status=True)});
        INSERT INTO goal_counts (key, n)
            SELECT key, 1 FROM ({_count_keys("new", by_status=True)}) {_ADD};
    END""",
    # Changes goalkit never makes, kept exact for whoever edits the file by hand.
    f"""CREATE TRIGGER goal_counts_update AFTER UPDATE OF owner, tags ON goals
    WHEN old.owner IS NOT new.owner OR old.tags IS NOT new.tags BEGIN
        UPDATE goal_counts SET n = n - 1 WHERE key IN ({_count_keys("old")});
        INSERT INTO goal_counts (key, n) SELECT key, 1 FROM ({_count_keys("new")}) {_ADD};
    END""",
    f"""CREATE TRIGGER goal_counts_delete AFTER DELETE ON goals BEGIN
        UPDATE goal_counts SET n = n - 1 WHERE key IN ({_count_keys("old")});
    END""",
    # A user's goals of one status, newest first, in one index range: a non-admin listing by
    # status always filters by owner too, and walking the owner's index for the few active
    # goals among many ended ones grew with the store.
    "CREATE INDEX goals_owner_status_seq ON goals (owner, status, seq)",
    # The goals already stored.
    f"""INSERT INTO goal_counts (key, n)
        SELECT key, count(*) FROM ({_count_keys("g", source="goals AS g, ")}) GROUP BY key""",
)


@MIGRATIONS(name="0005_goal_counts")
def _goal_counts(db: Database) -> None:
    # Each listing's `total` read from one row instead of counted: a count per combination
    # of the filters (owner, status, tag), kept by triggers in the transaction of each write;
    # and an index for listing one owner's goals of one status.
    for statement in COUNT_STATEMENTS:
        db.execute(statement)


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
        created_at, updated_at, completed_at, max_tokens, input_tokens, output_tokens,
        last_event_id, lease_owner, lease_expires)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
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
_UPDATE_STATE = """
    UPDATE goals SET phase = ?, total_steps = ?, steps_completed = ?,
        current_step = ?, result = ?, error = ?, updated_at = ?, completed_at = ?,
        last_event_id = ?, input_tokens = ?, output_tokens = ?, recoveries = ?,
        lease_owner = CASE WHEN ? THEN NULL ELSE lease_owner END,
        lease_expires = CASE WHEN ? THEN 0 ELSE lease_expires END
    WHERE seq = ?
"""
"""`_UPDATE_GOAL` for the writes that leave the status as it is (all but a goal's last): it
does not touch the status indexes, and the `goal_counts` trigger on status does not fire."""
_UPDATE_GOAL = """
    UPDATE goals SET status = ?, phase = ?, total_steps = ?, steps_completed = ?,
        current_step = ?, result = ?, error = ?, updated_at = ?, completed_at = ?,
        last_event_id = ?, input_tokens = ?, output_tokens = ?, recoveries = ?,
        lease_owner = CASE WHEN ? THEN NULL ELSE lease_owner END,
        lease_expires = CASE WHEN ? THEN 0 ELSE lease_expires END
    WHERE seq = ?
"""


_COUNT = "SELECT coalesce(max(n), 0) FROM goal_counts WHERE key = json_array(?, ?, ?)"
"""A listing's total: one row of the counts the triggers of ``0005_goal_counts`` keep."""


def _list_query(
    owner: str | None, status: Status | None, tag: str | None, cursor: str | None
) -> tuple[str, list[Any]]:
    """The SELECT of a page (the goal's fields, then its seq) and its parameters, to which
    the caller adds LIMIT and OFFSET: newest first along one index (owner, status or tag),
    starting below the cursor's goal when there is one."""
    where: list[str] = []
    params: list[Any] = []
    if tag is not None:
        # goal_tags is keyed (tag, seq): a tag's goals newest first are one index range.
        source, seq = "goal_tags t JOIN goals g ON g.seq = t.seq", "t.seq"
        where.append("t.tag = ?")
        params.append(tag)
    else:
        source, seq = "goals g", "g.seq"
    if owner is not None:
        where.append("g.owner = ?")
        params.append(owner)
    if status is not None:
        where.append("g.status = ?")
        params.append(status)
    if cursor is not None:
        where.append(f"{seq} < ?")
        params.append(decode_cursor(cursor))
    condition = f"WHERE {' AND '.join(where)}" if where else ""
    columns = ", ".join(f"g.{name}" for name in [*_GOAL_FIELDS, "seq"])
    sql = f"SELECT {columns} FROM {source} {condition} ORDER BY {seq} DESC LIMIT ? OFFSET ?"
    return sql, params


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


def _lease_after(transition: Transition, holder: str | None) -> str | None:
    """Who holds the goal's lease once `transition` is applied: nobody once it has ended."""
    return None if transition.goal.done else holder


def _goal(row: Sequence[Any], steps: tuple[Step, ...] = ()) -> Goal:
    """A goal from a row of `_GOAL_FIELDS`, in that order."""
    return Goal(
        id=row[0],
        workflow_id=row[1],
        description=row[2],
        model=row[3],
        mode=row[4],
        max_steps=row[5],
        max_retries=row[6],
        tags=tuple(json.loads(row[7])),
        owner=row[8],
        status=row[9],
        phase=row[10],
        total_steps=row[11],
        steps_completed=row[12],
        current_step=row[13],
        result=_load(row[14]),
        error=_load_error(row[15]),
        created_at=row[16],
        updated_at=row[17],
        completed_at=row[18],
        last_event_id=row[19],
        steps=steps,
        max_tokens=row[20],
        usage=Usage(row[21], row[22]),
        recoveries=row[23],
    )


def _step(row: Sequence[Any]) -> Step:
    """A step from a row of `_SELECT_STEPS`."""
    return Step(
        index=row[0],
        title=row[1],
        description=row[2],
        status=row[3],
        attempts=row[4],
        result=_load(row[5]),
        error=_load_error(row[6]),
        started_at=row[7],
        completed_at=row[8],
        usage=Usage(row[9], row[10]),
    )


def _event(row: Sequence[Any], workflow_id: str) -> Event:
    """An event from a row of (goal_id, id, type, ts, data)."""
    return Event(
        id=row[1],
        type=row[2],
        goal_id=row[0],
        workflow_id=workflow_id,
        ts=row[3],
        data=json.loads(row[4]),
    )


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """Run the block in one write transaction: commit at the end, roll back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # If even ROLLBACK fails the connection is broken; the original error says more.
        with suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        raise


def _call_soon_threadsafe() -> Schedule:
    """How another thread schedules a callback on this event loop without waiting for it.

    The lane threads must not stall until the loop has run their wake-up (they would sit
    idle while the loop runs coordinators); asyncio and trio both offer such a call, which
    anyio does not wrap, so it is picked here. Other loops fall back to
    `anyio.from_thread.run_sync` (which waits).
    """
    token = anyio.lowlevel.current_token()
    native = token.native_token
    if isinstance(native, asyncio.AbstractEventLoop):
        return cast(Schedule, native.call_soon_threadsafe)
    run_sync_soon = getattr(native, "run_sync_soon", None)  # a trio.lowlevel.TrioToken
    if callable(run_sync_soon):
        return cast(Schedule, run_sync_soon)
    return cast(Schedule, partial(anyio.from_thread.run_sync, token=token))


def _storage_error(path: str, exc: sqlite3.Error, busy_timeout: float) -> StorageError:
    message = str(exc)
    if "locked" in message or "busy" in message:
        message += f" (another connection held the write lock longer than {busy_timeout} s)"
    return StorageError(f"SQLite storage {path!r}: {message}")


class _Job:
    """One call waiting for a lane's thread: the work, then its result or error.

    `waiter` is what its caller sleeps on: an asyncio future on asyncio (a fifth of the cost
    of an `anyio.Event`, paid on every storage call), an `anyio.Event` elsewhere.
    """

    __slots__ = ("dropped", "error", "finished", "result", "taken", "transition", "waiter", "work")

    def __init__(
        self, work: Callable[[Any], Any], waiter: Any = None, transition: Transition | None = None
    ) -> None:
        self.work = work
        self.transition = transition  # set for `commit`: the writer may apply it with others
        self.waiter = waiter
        self.taken = self.dropped = self.finished = False
        self.result: Any = None
        self.error: BaseException | None = None


_STOP = _Job(lambda conn: None)
"""Queued by `_Lane.stop`: the thread finishes the jobs ahead of it, then exits."""
_NUDGE = _Job(lambda conn: None)
"""Queued after an urgent job, to wake the thread; it runs nothing."""


class _Lane:
    """A thread that owns one connection and runs queued jobs in batches.

    The event loop puts jobs on a `queue.SimpleQueue`, whose `put` wakes the thread without a
    trip through the loop; the thread takes everything queued (urgent jobs first, up to
    `max_batch` in all), runs it through `run_batch`, and only then schedules one wake-up of
    all their callers on the loop, without waiting for it. While the thread works, new jobs
    queue up: the busier the loop, the bigger the next batch.
    """

    def __init__(self, name: str, run_batch: Callable[[list[_Job]], None], max_batch: int) -> None:
        self.name = name
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._urgent: deque[_Job] = deque()
        # Held while jobs are taken, and by a cancelled caller deciding to drop its job, so
        # a job is either taken or dropped, never both.
        self._taking = threading.Lock()
        self._thread: threading.Thread | None = None
        self._aio: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        wake_soon = _call_soon_threadsafe()
        native: object = anyio.lowlevel.current_token().native_token
        self._aio = native if isinstance(native, asyncio.AbstractEventLoop) else None
        self._jobs = queue.SimpleQueue()
        self._urgent.clear()
        self._thread = threading.Thread(
            target=self._loop,
            args=(wake_soon,),
            name=self.name,
            daemon=True,  # a loop that ends without close() must not hang the process
        )
        self._thread.start()

    async def stop(self) -> None:
        """Finish the jobs queued so far, then end the thread (call shielded)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(_STOP)
            await anyio.to_thread.run_sync(thread.join)

    async def submit(
        self,
        work: Callable[[Any], T],
        *,
        urgent: bool = False,
        transition: Transition | None = None,
    ) -> T:
        """Queue `work` (ahead of the others when `urgent`) and wait for its batch to finish."""
        job = _Job(work, self._waiter(), transition)
        if urgent:
            self._urgent.append(job)
            self._jobs.put(_NUDGE)
        else:
            self._jobs.put(job)
        try:
            await _sleep_on(job.waiter)
        except BaseException:
            # Cancelled: a job the thread has not taken yet is dropped; one it has taken is
            # waited for, so the caller's cancellation never splits a transaction.
            with self._taking:
                job.dropped = not job.taken
            if job.taken:
                with anyio.CancelScope(shield=True):
                    while not job.finished:  # the cancelled waiter cannot be waited on again
                        job.waiter = self._waiter()
                        await _sleep_on(job.waiter)
            raise
        if job.error is not None:
            raise job.error
        result: T = job.result
        return result

    def _waiter(self) -> Any:
        return anyio.Event() if self._aio is None else self._aio.create_future()

    def _take(self, first: _Job) -> list[_Job]:
        """The next batch: urgent jobs, then `first` and what is queued behind it."""
        batch: list[_Job] = []
        with self._taking:
            while self._urgent:
                self._claim(self._urgent.popleft(), batch)
            job = first
            while True:
                self._claim(job, batch)
                if len(batch) >= self._max_batch or job is _STOP:
                    return batch
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    return batch

    @staticmethod
    def _claim(job: _Job, batch: list[_Job]) -> None:
        if job is not _NUDGE and not job.dropped:
            job.taken = True
            batch.append(job)

    def _loop(self, wake_soon: Schedule) -> None:
        while True:
            batch = self._take(self._jobs.get())
            stop = _STOP in batch
            if stop:
                batch.remove(_STOP)
            if batch:
                try:
                    self._run_batch(batch)
                except Exception as exc:  # a bug: its callers get the error, never a hang
                    for job in batch:
                        job.result, job.error = None, exc
                with suppress(Exception):  # the event loop is gone: nobody is waiting
                    wake_soon(partial(_wake, batch))
            if stop:
                return


async def _sleep_on(waiter: Any) -> None:
    if isinstance(waiter, anyio.Event):
        await waiter.wait()
    else:
        await waiter


def _wake(batch: list[_Job]) -> None:
    """On the event loop's thread: the batch is done, wake each caller."""
    for job in batch:
        job.finished = True
        waiter = job.waiter
        if isinstance(waiter, anyio.Event):
            waiter.set()
        elif not waiter.done():  # a cancelled caller's future is done already
            waiter.set_result(None)


class _Rows:
    """What the writer writes for some commits: step upserts, events, and goal rows, those
    that keep the goal's status (`_UPDATE_STATE`) apart from those that end it."""

    __slots__ = ("ends", "events", "moves", "steps")

    def __init__(self) -> None:
        self.steps: list[tuple[Any, ...]] = []
        self.events: list[tuple[Any, ...]] = []
        self.moves: list[tuple[Any, ...]] = []
        self.ends: list[tuple[Any, ...]] = []

    def extend(self, other: _Rows) -> None:
        self.steps += other.steps
        self.events += other.events
        self.moves += other.moves
        self.ends += other.ends

    def write(self, conn: sqlite3.Connection) -> None:
        if self.steps:
            conn.executemany(_UPSERT_STEP, self.steps)
        if self.events:
            conn.executemany(_INSERT_EVENT, self.events)
        # A goal's status changes only at its end, after which it takes no more writes: the
        # rows that keep their status go first, then those that end a goal.
        if self.moves:
            conn.executemany(_UPDATE_STATE, self.moves)
        if self.ends:
            conn.executemany(_UPDATE_GOAL, self.ends)


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
        self._db: Database | None = None  # the writer's connection (schema, migrations)
        self._reader: Database | None = None
        self._writer = _Lane(f"goalkit writer {self.path}", self._commit_batch, MAX_BATCH)
        self._readers = _Lane(f"goalkit reader {self.path}", self._read_batch, MAX_BATCH)

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.path!r}, synchronous={self.synchronous!r})"

    # -- plumbing ---------------------------------------------------------------------------

    def _error(self, exc: sqlite3.Error) -> StorageError:
        return _storage_error(self.path, exc, self.busy_timeout)

    async def _run(self, work: Callable[[Database], T]) -> T:
        """Run a read on the reader connection, in the reader thread (never behind writes)."""
        if not self._readers.running:
            raise StorageError(f"SQLite storage {self.path!r} is not open")
        return await self._readers.submit(work)

    async def _write(
        self,
        work: Callable[[sqlite3.Connection], T],
        *,
        urgent: bool = False,
        transition: Transition | None = None,
    ) -> T:
        """Queue a write for the writer thread and wait until its batch has committed.

        `urgent` writes (lease renewals and releases) go to the front of the queue, so a
        heartbeat waits for one batch at most, never behind a backlog of transitions.
        """
        if not self._writer.running:
            raise StorageError(f"SQLite storage {self.path!r} is not open")
        return await self._writer.submit(work, urgent=urgent, transition=transition)

    def _read_batch(self, batch: list[_Job]) -> None:
        """The reader thread: run the batch's reads in one read transaction (one snapshot).

        The reads of a batch were all waiting at once, so one snapshot, taken after every one
        of them was asked for, is as fresh as each needs; it saves two statements per read.
        """
        assert self._reader is not None
        conn = self._reader.conn
        try:
            conn.execute("BEGIN DEFERRED")
        except sqlite3.Error as exc:
            self._fail_all(batch, exc)
            return
        for job in batch:
            try:
                job.result = job.work(self._reader)
            except sqlite3.Error as exc:
                job.error = self._error(exc)
                job.error.__cause__ = exc
            except Exception as exc:
                job.error = exc
        with suppress(sqlite3.Error):  # a read transaction has nothing to lose
            conn.execute("COMMIT")

    def _commit_batch(self, batch: list[_Job]) -> None:
        """Apply each write in its own savepoint, all in one transaction: group commit.

        A write that raises (a fence, bad JSON, a constraint) is rolled back to its savepoint
        and gets its error; the others in the batch commit. If the transaction as a whole
        fails (the write lock is busy past the timeout, the disk is full), every write in
        the batch gets that error and nothing of it is stored.
        """
        assert self._db is not None
        conn = self._db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._fail_all(batch, exc)
            return
        commits = [op for op in batch if op.transition is not None]
        together = len(commits) > 1  # else the plain path is fewer statements
        alone = len(batch) == 1  # no savepoint needed: a failure rolls back everything
        for op in batch:
            if together and op.transition is not None:
                continue
            if not self._run_one(conn, op, alone, batch):
                return
        if together and not self._run_together(conn, commits, batch):
            return
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._abort(conn, [o for o in batch if o.error is None], exc)

    def _run_one(self, conn: sqlite3.Connection, op: _Job, alone: bool, batch: list[_Job]) -> bool:
        """Apply one write in its own savepoint; False when the transaction is gone."""
        try:
            if not alone:
                conn.execute("SAVEPOINT w")
            op.result = op.work(conn)
            if not alone:
                conn.execute("RELEASE w")
        except Exception as exc:
            op.result = None
            op.error = self._error(exc) if isinstance(exc, sqlite3.Error) else exc
            if isinstance(exc, sqlite3.Error):
                op.error.__cause__ = exc
            if not conn.in_transaction:
                # SQLite rolled the whole transaction back itself: nothing here stuck.
                self._fail_all([o for o in batch if o.error is None], exc)
                return False
            try:
                if alone:
                    conn.execute("ROLLBACK")
                    return False
                conn.execute("ROLLBACK TO w")
                conn.execute("RELEASE w")
            except sqlite3.Error as again:
                self._abort(conn, [o for o in batch if o.error is None], again)
                return False
        return True

    def _run_together(self, conn: sqlite3.Connection, ops: list[_Job], batch: list[_Job]) -> bool:
        """Apply a batch's commits with `_commit_many`, or one by one should SQLite refuse."""
        try:
            conn.execute("SAVEPOINT together")
            self._commit_many(conn, ops)
            conn.execute("RELEASE together")
            return True
        except Exception as exc:
            # A constraint or I/O error somewhere in the group: undo the group, then apply
            # its commits one by one, so only the one at fault fails.
            for op in ops:
                op.result = op.error = None
            if not conn.in_transaction:
                # SQLite rolled the whole transaction back itself: nothing here stuck.
                self._fail_all([o for o in batch if o.error is None], exc)
                return False
            try:
                conn.execute("ROLLBACK TO together")
                conn.execute("RELEASE together")
            except sqlite3.Error as again:
                self._abort(conn, [o for o in batch if o.error is None], again)
                return False
        return all(self._run_one(conn, op, False, batch) for op in ops)

    def _abort(self, conn: sqlite3.Connection, ops: list[_Job], exc: sqlite3.Error) -> None:
        # If even ROLLBACK fails the connection is broken; the original error says more.
        with suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        self._fail_all(ops, exc)

    def _fail_all(self, ops: list[_Job], exc: BaseException) -> None:
        for op in ops:
            op.result = None
            if isinstance(exc, sqlite3.Error):
                op.error = self._error(exc)
                op.error.__cause__ = exc
            else:
                op.error = exc

    def _connect(self) -> None:
        if self._db is not None:
            return
        db = self._open_connection(migrate=True)
        try:
            self._reader = self._open_connection(migrate=False)
        except BaseException:
            db.close()
            raise
        self._db = db

    def _open_connection(self, *, migrate: bool) -> Database:
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
            if migrate:
                self._enable_wal(db)
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
            if migrate:
                with _transaction(conn):
                    MIGRATIONS.apply(db)
        except sqlite3.Error as exc:
            conn.close()
            raise self._error(exc) from exc
        except BaseException:
            conn.close()
            raise
        return db

    def _enable_wal(self, db: Database) -> None:
        """Switch the file to WAL, retrying while other connections hold it (up to the busy
        timeout): when several stores open a fresh file at once, SQLite may refuse the switch
        with "database is locked" at once rather than wait (it would deadlock otherwise)."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                db.enable_wal()
                return
            except sqlite3.OperationalError as exc:
                transient = "locked" in str(exc) or "busy" in str(exc)
                if not transient or time.monotonic() >= deadline:
                    raise
            time.sleep(0.01)  # in a worker thread (`open`), never on the event loop

    def _disconnect(self) -> None:
        db, self._db = self._db, None
        reader, self._reader = self._reader, None
        try:
            if reader is not None:
                reader.close()
        finally:
            if db is not None:
                try:
                    db.close()
                except sqlite3.Error as exc:
                    raise self._error(exc) from exc

    # -- Storage ----------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer.running:
            return
        await anyio.to_thread.run_sync(self._connect)
        self._writer.start()
        self._readers.start()

    async def close(self) -> None:
        # Shielded: closing on the way out of a cancelled scope must still close.
        with anyio.CancelScope(shield=True):
            await self._readers.stop()
            await self._writer.stop()
            await anyio.to_thread.run_sync(self._disconnect)

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

        def work(conn: sqlite3.Connection) -> Event:
            expires = 0.0 if lease_owner is None else time.time() + lease_ttl
            if idempotency_key is not None:
                earlier = conn.execute(
                    "SELECT goal_id, fingerprint FROM idempotency_keys WHERE owner = ? AND key = ?",
                    (goal.owner, idempotency_key),
                ).fetchone()
                if earlier is not None:
                    if earlier[1] != fingerprint:
                        raise GoalConflict(KEY_REUSED)
                    return self._first_event(conn, earlier[0])
            # The event first as a row, so the goal's row is inserted complete (no UPDATE).
            step_rows, event_row, _, event = self._rows(0, goal.workflow_id, 0, transition)
            assert event_row is not None and event is not None
            cursor = conn.execute(_INSERT_GOAL, (*row, event.id, lease_owner, expires))
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
            if goal.tags:
                conn.executemany(
                    "INSERT INTO goal_tags (tag, seq) VALUES (?, ?)",
                    [(tag, seq) for tag in goal.tags],
                )
            if step_rows:
                conn.executemany(_UPSERT_STEP, step_rows)
            conn.execute(_INSERT_EVENT, event_row)
            return event

        return await self._write(work)

    @staticmethod
    def _rows(
        seq: int, workflow_id: str, last: int, transition: Transition
    ) -> tuple[list[tuple[Any, ...]], tuple[Any, ...] | None, tuple[Any, ...], Event | None]:
        """What a transition writes: step rows, event row (or None), goal row, and its event.

        Raises `StorageError` for a value that is not JSON, before anything is written.
        """
        goal = transition.goal
        steps = [
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
        ]
        event = event_row = None
        if transition.event is not None:
            event = Event(
                id=last + 1,
                type=transition.event,
                goal_id=goal.id,
                workflow_id=workflow_id,
                ts=round(time.time(), 3),
                data=transition.data,
            )
            event_row = (goal.id, event.id, event.type, event.ts, _dump(transition.data))
            last = event.id
        goal_row = (
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
        )
        return steps, event_row, goal_row, event

    @staticmethod
    def _fence(
        goal_id: str, row: tuple[str, int, str | None], link: Transition
    ) -> GoalkitError | None:
        """Why a write is refused, given the goal's (status, last_event_id, lease_owner)."""
        status, last, lease_owner = row
        if link.lease is not None and (lease_owner != link.lease or status != "active"):
            return LeaseLost(f"lease on goal {goal_id!r} is no longer held")
        if link.version is not None and last != link.version:
            return GoalConflict(f"goal {goal_id!r} changed meanwhile")
        return None

    @classmethod
    def _chain_rows(
        cls, goal_id: str, found: list[Any], transition: Transition
    ) -> tuple[_Rows, tuple[Event, ...], list[Any]]:
        """The rows of `transition` and the links chained after it, the events they append,
        and the goal's state after them, from its state as stored (`found`: seq, workflow_id,
        status, last_event_id, lease_owner).

        Each link's fences are checked against the goal as the links before it leave it.
        Raises the refusal of the first link refused, or `StorageError` for data that is not
        JSON: nothing of the chain is written then.
        """
        seq, workflow_id, status, last, lease_owner = found
        rows = _Rows()
        events: list[Event] = []
        for link in transition.links():
            refused = cls._fence(goal_id, (status, last, lease_owner), link)
            if refused is not None:
                raise refused
            step_rows, event_row, goal_row, event = cls._rows(seq, workflow_id, last, link)
            rows.steps += step_rows
            if event_row is not None and event is not None:
                rows.events.append(event_row)
                events.append(event)
                last = event.id
            if goal_row[0] == status:
                rows.moves.append(goal_row[1:])
            else:
                rows.ends.append(goal_row)
            status, lease_owner = link.goal.status, _lease_after(link, lease_owner)
        return rows, tuple(events), [seq, workflow_id, status, last, lease_owner]

    async def commit(self, transition: Transition) -> tuple[Event, ...]:
        goal_id = transition.goal.id

        def work(conn: sqlite3.Connection) -> tuple[Event, ...]:
            row = conn.execute(
                "SELECT seq, workflow_id, status, last_event_id, lease_owner "
                "FROM goals WHERE id = ?",
                (goal_id,),
            ).fetchone()
            if row is None:
                raise GoalNotFound(goal_id)
            rows, events, _ = self._chain_rows(goal_id, list(row), transition)
            rows.write(conn)
            return events

        return await self._write(work, transition=transition)

    @classmethod
    def _commit_many(cls, conn: sqlite3.Connection, ops: list[_Job]) -> None:
        """Apply the commits of a batch together: one read of their goals, then one
        ``executemany`` per table, instead of five statements per commit.

        Fences are checked in Python against the goals as the batch leaves them, in batch
        order, so the outcome is the one of applying the commits one after another. A refused
        or unserialisable commit gets its error and writes nothing. If SQLite itself fails,
        the caller rolls the whole group back and applies its commits one by one.
        """
        ids = _dump(sorted({op.transition.goal.id for op in ops if op.transition is not None}))
        state: dict[str, list[Any]] = {
            row[0]: list(row[1:])
            for row in conn.execute(
                "SELECT id, seq, workflow_id, status, last_event_id, lease_owner FROM goals "
                "WHERE id IN (SELECT value FROM json_each(?))",
                (ids,),
            )
        }
        rows = _Rows()
        for op in ops:
            transition = op.transition
            assert transition is not None
            goal_id = transition.goal.id
            found = state.get(goal_id)
            try:
                if found is None:
                    raise GoalNotFound(goal_id)
                own, op.result, state[goal_id] = cls._chain_rows(goal_id, found, transition)
            except GoalkitError as exc:  # refused, or not JSON: this commit writes nothing
                op.error = exc
                continue
            rows.extend(own)
        rows.write(conn)

    @staticmethod
    def _read_goal(conn: sqlite3.Connection, goal_id: str, steps: bool) -> Goal | None:
        row = conn.execute(_SELECT_GOAL, (goal_id,)).fetchone()
        if row is None:
            return None
        step_rows = (
            tuple(_step(r) for r in conn.execute(_SELECT_STEPS, (goal_id,))) if steps else ()
        )
        return _goal(row, step_rows)

    async def get_goal(self, goal_id: str, *, steps: bool = True) -> Goal | None:
        def work(db: Database) -> Goal | None:
            return self._read_goal(db.conn, goal_id, steps)

        return await self._run(work)

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
        select, params = _list_query(owner, status, tag, cursor)
        # One row past the page says whether another page follows.
        paging = [max(limit, 0) + 1, max(offset, 0)]

        def work(db: Database) -> Page:
            (total,) = db.execute(_COUNT, [owner, status, tag]).fetchone()
            rows = db.execute(select, [*params, *paging]).fetchall()
            more = 0 < limit < len(rows)
            rows = rows[: max(limit, 0)]
            return Page(
                items=tuple(_goal(row) for row in rows),
                total=total,
                limit=limit,
                offset=offset if cursor is None else None,
                next_cursor=encode_cursor(rows[-1][-1]) if more else None,
            )

        return await self._run(work)

    async def goals_by_workflow(self, workflow_id: str) -> list[Goal]:
        sql = f"SELECT {_GOAL_COLUMNS} FROM goals WHERE workflow_id = ? ORDER BY seq"

        def work(db: Database) -> list[Goal]:
            return [_goal(row) for row in db.execute(sql, [workflow_id]).fetchall()]

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
            found = db.execute("SELECT workflow_id FROM goals WHERE id = ?", [goal_id]).fetchone()
            if found is None:
                return []
            rows = db.execute(
                "SELECT goal_id, id, type, ts, data FROM events "
                "WHERE goal_id = ? AND id > ? ORDER BY id LIMIT ?",
                [goal_id, max(after, 0), max(limit, 0)],
            )
            return [_event(row, found[0]) for row in rows]

        return await self._run(work)

    async def claim_goals(
        self, owner: str, *, ttl: float, limit: int, exclude: Iterable[str] = ()
    ) -> list[Goal]:
        skip = _dump(sorted(set(exclude)))

        def work(conn: sqlite3.Connection) -> list[Goal]:
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
            claimed = [self._read_goal(conn, goal_id, True) for _, goal_id in candidates]
            return [goal for goal in claimed if goal is not None]

        return await self._write(work)

    async def renew_leases(self, owner: str, goal_ids: Iterable[str], *, ttl: float) -> set[str]:
        ids = _dump(sorted(set(goal_ids)))

        def work(conn: sqlite3.Connection) -> set[str]:
            rows = conn.execute(
                "UPDATE goals SET lease_expires = ? "
                "WHERE lease_owner = ? AND id IN (SELECT value FROM json_each(?)) "
                "RETURNING id",
                (time.time() + ttl, owner, ids),
            ).fetchall()
            return {goal_id for (goal_id,) in rows}

        return await self._write(work, urgent=True)

    async def release_leases(self, owner: str, goal_ids: Iterable[str]) -> None:
        ids = _dump(sorted(set(goal_ids)))

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE goals SET lease_owner = NULL, lease_expires = 0 "
                "WHERE lease_owner = ? AND id IN (SELECT value FROM json_each(?))",
                (owner, ids),
            )

        await self._write(work, urgent=True)


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

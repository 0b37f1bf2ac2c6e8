"""Storage faults (issue 5 point 3): workflows finish right or fail cleanly, nothing corrupts.

The faults come from a storage plugin written as a plugin author would write one: a
`goalkit_storage` hook serving ``faulty+sqlite:///path.db`` with a wrapper around the real
`SQLiteStorage` that raises at commit points, before the write (nothing stored) or after it
(stored, but the caller hears of an error) — SQLite's own ``database is locked`` as a raw
`sqlite3.OperationalError`, as a careless plugin would let it out, and ``disk I/O error`` as a
`StorageError`. A second test holds the real write lock from another process for 2 s.
Afterwards the file must pass ``PRAGMA integrity_check``, every event log must be numbered
without gaps, and no exception may have reached the caller as anything but a `GoalkitError`.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from figures import record
from test_durability import check_event_logs, integrity, snapshot, until

from goalkit import GoalkitError, GoalManager, StorageError, hookimpl
from goalkit.models import JSON, Goal, Step
from goalkit.storage.sqlite import SQLiteStorage
from goalkit.transitions import Transition

pytestmark = pytest.mark.anyio

T = TypeVar("T")
STEPS = ("gather", "draft", "review")


class Steps:
    """A provider plugin: three steps of `delay` seconds, each result naming goal and step."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay

    @hookimpl
    def goalkit_model_provider(self, model: str) -> Steps | None:
        return self if model == "steps" else None

    async def plan(self, goal: Goal, max_steps: int) -> list[str]:
        return list(STEPS)

    async def run_step(self, goal: Goal, step: Step, previous: Sequence[Step]) -> JSON:
        await anyio.sleep(self.delay)
        assert [p.index for p in previous] == list(range(1, step.index))
        return f"{goal.description}/{step.title}"


class Faulty:
    """Serves ``faulty+sqlite:///path``: the SQLite backend with errors at commit points."""

    POINTS = ("create_goal", "commit", "claim_goals", "renew_leases", "get_goal", "read_events")

    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self.rng = random.Random(seed)
        self.injected: dict[str, int] = {}

    @hookimpl
    def goalkit_storage(self, url: str) -> Any:
        if not url.startswith("faulty+sqlite:///"):
            return None
        return FaultyStorage(SQLiteStorage(url.removeprefix("faulty+sqlite:///")), self)

    def fault(self, point: str, after: bool) -> None:
        if self.rng.random() >= self.rate:
            return
        key = f"{point} {'after' if after else 'before'} the write"
        self.injected[key] = self.injected.get(key, 0) + 1
        if self.rng.random() < 0.5:
            raise sqlite3.OperationalError("database is locked")
        raise StorageError("disk I/O error (injected)")


class FaultyStorage:
    """Delegates to the real backend; the fault points fail some calls before or after it."""

    def __init__(self, inner: SQLiteStorage, faults: Faulty) -> None:
        self.inner = inner
        self.faults = faults

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def _around(self, point: str, call: Callable[[], Awaitable[T]]) -> T:
        self.faults.fault(point, after=False)
        result = await call()
        self.faults.fault(point, after=True)
        return result

    async def create_goal(self, transition: Transition, **options: Any) -> Any:
        return await self._around(
            "create_goal", lambda: self.inner.create_goal(transition, **options)
        )

    async def commit(self, transition: Transition) -> Any:
        return await self._around("commit", lambda: self.inner.commit(transition))

    async def claim_goals(self, owner: str, **options: Any) -> Any:
        return await self._around("claim_goals", lambda: self.inner.claim_goals(owner, **options))

    async def renew_leases(self, owner: str, goal_ids: Any, **options: Any) -> Any:
        return await self._around(
            "renew_leases", lambda: self.inner.renew_leases(owner, goal_ids, **options)
        )

    async def get_goal(self, goal_id: str, **options: Any) -> Any:
        return await self._around("get_goal", lambda: self.inner.get_goal(goal_id, **options))

    async def read_events(self, goal_id: str, **options: Any) -> Any:
        return await self._around("read_events", lambda: self.inner.read_events(goal_id, **options))


class Caller:
    """Calls the public API as a client would: retries on errors, which must be GoalkitErrors."""

    def __init__(self) -> None:
        self.errors: dict[str, int] = {}
        self.foreign: list[BaseException] = []

    async def __call__(self, call: Callable[[], Awaitable[T]], deadline: float = 60) -> T:
        end = time.monotonic() + deadline
        while True:
            try:
                return await call()
            except GoalkitError as exc:
                self.errors[exc.code] = self.errors.get(exc.code, 0) + 1
            except Exception as exc:  # the bug this test exists to catch
                self.foreign.append(exc)
            if time.monotonic() > end:
                pytest.fail(f"still failing after {deadline}s: {self.errors} {self.foreign[:3]}")
            await anyio.sleep(0.05)


def check_results(goals: list[Goal]) -> None:
    """Completed goals carry exactly the results their provider returned, step by step."""
    for goal in goals:
        assert goal.status == "completed", (goal.id, goal.status, goal.error)
        assert [s.result for s in goal.steps] == [f"{goal.description}/{t}" for t in STEPS]
        assert goal.result == f"{goal.description}/review"


class TestInjectedFaults:
    """Errors at commit points, before or after the write, as a plugin may raise them."""

    GOALS = 20

    async def test_workflows_finish_and_nothing_corrupts(self, tmp_path: Path) -> None:
        """Every goal completes with the right results; callers only ever see GoalkitErrors."""
        db = tmp_path / "goals.db"
        seed = random.randrange(2**32)
        faults = Faulty(rate=0.1, seed=seed)
        call = Caller()
        async with GoalManager(
            f"faulty+sqlite:///{db}",
            plugins=[Steps(), faults],
            entry_points=False,
            lease_ttl=0.5,
            retry_backoff=0,
            max_recoveries=10,
        ) as manager:
            # A client retries a failed create with the same Idempotency-Key: one goal each,
            # even when the error came after the goal was stored.
            ids = [
                (
                    await call(
                        lambda i=i: manager.create(
                            f"goal {i}", model="steps", idempotency_key=f"k{i}"
                        )
                    )
                ).id
                for i in range(self.GOALS)
            ]
            done = [await call(lambda g=g: manager.wait(g, timeout=30)) for g in ids]
            listed = await call(lambda: manager.list(limit=500))
        assert not call.foreign, f"non-goalkit exceptions reached the caller: {call.foreign[:3]}"
        assert sum(faults.injected.values()) >= 10, faults.injected  # the test did inject
        assert listed.total == self.GOALS
        check_results(done)
        assert integrity(db) == "ok"
        state = await snapshot(db)
        check_event_logs(state)
        for _goal, events in state.values():
            assert sum(e.terminal for e in events) == 1
            completed = [e.data["step"] for e in events if e.type == "goal.step_completed"]
            assert completed == [1, 2, 3]  # no step completed twice, none skipped
        record(
            "faults.injected",
            seed=seed,
            goals=self.GOALS,
            faults_injected=sum(faults.injected.values()),
            faults_by_point=faults.injected,
            errors_seen_by_caller=call.errors,
            non_goalkit_errors_seen_by_caller=len(call.foreign),
            goals_completed=sum(g.status == "completed" for g in done),
            goals_lost=self.GOALS - listed.total,
            integrity_check=integrity(db),
        )


LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
open(sys.argv[2], "w").close()
time.sleep(float(sys.argv[3]))
conn.execute("COMMIT")
"""


class TestOutsideWriteLock:
    """Another process holds the write lock for 2 s while goals run."""

    GOALS, HOLD = 20, 2.0

    @pytest.mark.parametrize("busy_timeout", [5.0, 0.5], ids=["waits-it-out", "times-out"])
    async def test_goals_finish_after_the_lock(
        self, tmp_path: Path, busy_timeout: float, caplog: pytest.LogCaptureFixture
    ) -> None:
        """With busy_timeout above 2 s writes wait; below it they fail cleanly and resume."""
        db = tmp_path / "goals.db"

        class Short:
            """Serves ``short+sqlite:///path``: SQLite with a chosen busy_timeout."""

            @hookimpl
            def goalkit_storage(self, url: str) -> Any:
                if not url.startswith("short+sqlite:///"):
                    return None
                return SQLiteStorage(
                    url.removeprefix("short+sqlite:///"), busy_timeout=busy_timeout
                )

        call = Caller()
        async with GoalManager(
            f"short+sqlite:///{db}",
            plugins=[Steps(delay=0.3), Short()],  # the early goals are mid-step at the lock
            entry_points=False,
            lease_ttl=1.0,
            retry_backoff=0,
        ) as manager:
            first = [
                (await call(lambda i=i: manager.create(f"early {i}", model="steps"))).id
                for i in range(self.GOALS)
            ]
            locked = tmp_path / "locked"
            locker = await anyio.open_process(
                [sys.executable, "-c", LOCKER, str(db), str(locked), str(self.HOLD)],
                stdout=None,
                stderr=None,
            )
            try:
                await until(locked.exists, 20, "the other process to take the write lock")
                # Created while the lock is held: waits (5 s) or fails as a StorageError.
                late = [
                    (await call(lambda i=i: manager.create(f"late {i}", model="steps"))).id
                    for i in range(5)
                ]
                done = [await call(lambda g=g: manager.wait(g, timeout=30)) for g in first + late]
            finally:
                if locker.returncode is None:
                    with anyio.move_on_after(10):
                        await locker.wait()
                if locker.returncode is None:
                    locker.kill()
                await locker.wait()
        assert locker.returncode == 0
        assert not call.foreign, f"non-goalkit exceptions reached the caller: {call.foreign[:3]}"
        locked_out = [r for r in caplog.records if "locked" in _text(r)]
        if busy_timeout > self.HOLD:
            # Everything simply waited for the lock: no caller error, no write given up.
            assert call.errors == {}
            assert locked_out == []
        else:
            # Writes gave up ("database is locked"); coordinators stopped and resumed later.
            assert locked_out
            assert set(call.errors) <= {"storage_error"}
        check_results(done)
        assert integrity(db) == "ok"
        check_event_logs(await snapshot(db))
        record(
            f"faults.outside_write_lock.{'waits' if busy_timeout > self.HOLD else 'times_out'}",
            goals=len(done),
            lock_held_seconds=self.HOLD,
            busy_timeout=busy_timeout,
            errors_seen_by_caller=call.errors,
            writes_given_up_logged=len(locked_out),
            goals_completed=sum(g.status == "completed" for g in done),
            goals_lost=self.GOALS + 5 - len(done),
            integrity_check="ok",
        )


def _text(record: logging.LogRecord) -> str:
    """A log record's message with the text of the exception it carries, if any."""
    exc = record.exc_info[1] if record.exc_info else None
    return f"{record.getMessage()} {exc!r} {exc.__cause__!r}" if exc else record.getMessage()

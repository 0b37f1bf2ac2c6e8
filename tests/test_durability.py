"""Durability on one SQLite file, with real processes (SPEC §6, issue 2 point 7).

Each test runs ``tests/durability_worker.py`` processes (one `GoalManager` each, the recording
provider loaded as a plugin file) against a database in ``tmp_path``, kills or freezes them with
signals, and then checks three independent records against each other: the provider's call log
(fsynced before each call returns), the events stored in the database (read through
`SQLiteStorage`, never through a manager, which would resume the goals), and each worker's
summary.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from figures import record

from goalkit import LeaseLost, StepSpec, transitions
from goalkit.models import Event, Goal, new_goal_id, new_workflow_id
from goalkit.storage.sqlite import SQLiteStorage

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals"),
]

WORKER = Path(__file__).with_name("durability_worker.py")
SLACK = 1.5
"""Seconds of scheduling slack allowed on a loaded 2-core machine."""


# -- helpers ----------------------------------------------------------------------------------


@attrs.frozen
class Call:
    """One line of the call log."""

    kind: str  # "S" (started) or "E" (about to return)
    goal: str
    step: int
    attempt: int
    pid: int
    t: float


def read_calls(log: Path) -> list[Call]:
    if not log.exists():
        return []
    calls = []
    for line in log.read_text().splitlines():
        kind, goal, step, attempt, pid, t = line.split()
        calls.append(Call(kind, goal, int(step), int(attempt), int(pid), float(t)))
    return calls


def in_flight(calls: list[Call], pid: int) -> set[tuple[str, int, int]]:
    """(goal, step, attempt) of the calls of `pid` that started and have not returned."""
    started = {(c.goal, c.step, c.attempt) for c in calls if c.kind == "S" and c.pid == pid}
    ended = {(c.goal, c.step, c.attempt) for c in calls if c.kind == "E" and c.pid == pid}
    return started - ended


@attrs.define
class Worker:
    """A running worker process, with its stdout and stderr kept in files."""

    name: str
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    ready: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def summary(self) -> dict[str, Any]:
        return json.loads(self.out.read_text())

    def stderr(self) -> str:
        return self.err.read_text() if self.err.exists() else ""

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> float:
        """Send `sig` and return the time it was sent."""
        sent = time.time()
        os.kill(self.pid, sig)
        return sent

    async def exited(self, seconds: float) -> int:
        """Wait up to `seconds` for the process to exit; its return code."""
        with anyio.fail_after(seconds):
            while self.proc.poll() is None:  # noqa: ASYNC110 (a child process has no event)
                await anyio.sleep(0.02)
        return self.proc.returncode

    async def finished(self, seconds: float = 30) -> dict[str, Any]:
        """Wait for a clean exit and return the summary it printed."""
        code = await self.exited(seconds)
        assert code == 0, f"{self.name} exited with {code}:\n{self.stderr()[-3000:]}"
        return self.summary()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start workers on ``tmp_path/goals.db`` logging to ``tmp_path/calls.log``; reap them all."""
    workers: list[Worker] = []

    def start(name: str, *args: str | float) -> Worker:
        out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        ready = tmp_path / f"{name}.ready"
        command = [
            sys.executable,
            str(WORKER),
            "--db",
            str(tmp_path / "goals.db"),
            "--log",
            str(tmp_path / "calls.log"),
            "--ready",
            str(ready),
            *map(str, args),
        ]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        worker = Worker(name, proc, out, err, ready)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        if worker.proc.poll() is None:
            worker.proc.kill()  # SIGKILL ends a stopped process too
        worker.proc.wait()


async def until(check: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll `check` every 10 ms until it holds; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds}s waiting for {what}")
        await anyio.sleep(0.01)


@asynccontextmanager
async def storage(db: Path) -> AsyncIterator[SQLiteStorage]:
    """The store opened directly: reading it resumes nothing."""
    store = SQLiteStorage(db)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def snapshot(db: Path, limit: int = 500) -> dict[str, tuple[Goal, list[Event]]]:
    """Every goal of the store (up to `limit`) with its steps and its full event log."""
    async with storage(db) as store:
        page = await store.list_goals(limit=limit)
        found = {}
        for item in page.items:
            goal = await store.get_goal(item.id)
            assert goal is not None
            found[goal.id] = (goal, await store.read_events(goal.id, limit=10_000))
        return found


def completed_steps(events: list[Event]) -> list[int]:
    return [int(e.data["step"]) for e in events if e.type == "goal.step_completed"]


def check_event_logs(state: dict[str, tuple[Goal, list[Event]]]) -> None:
    """Numbered 1..n without gaps, and the goal row agrees with its newest event."""
    for goal, events in state.values():
        assert [e.id for e in events] == list(range(1, len(events) + 1)), goal.id
        assert goal.last_event_id == len(events), goal.id
        assert events[0].type == "goal.created", goal.id


def check_completed(state: dict[str, tuple[Goal, list[Event]]], steps: int) -> None:
    """Every goal completed, each of its steps completed exactly once, in order."""
    for goal, events in state.values():
        assert goal.status == "completed", (goal.id, goal.status, goal.error)
        assert goal.total_steps == goal.steps_completed == steps, goal.id
        assert all(s.status == "completed" for s in goal.steps), goal.id
        assert completed_steps(events) == list(range(1, steps + 1)), goal.id
        assert events[-1].type == "goal.completed", goal.id
        assert sum(e.terminal for e in events) == 1, goal.id


def check_results_match_calls(
    state: dict[str, tuple[Goal, list[Event]]], calls: list[Call]
) -> None:
    """Each stored result was returned by a logged call of the process and attempt it names."""
    returned = {(c.goal, c.step, c.attempt, c.pid) for c in calls if c.kind == "E"}
    for goal, _ in state.values():
        for step in goal.steps:
            result = step.result
            assert isinstance(result, dict), (goal.id, step.index, result)
            assert result["step"] == step.index
            assert result["attempt"] == step.attempts, (goal.id, step.index)
            assert (goal.id, step.index, step.attempts, result["pid"]) in returned


# -- the tests --------------------------------------------------------------------------------


class TestCrashRecovery:
    """A worker SIGKILLed mid-step loses nothing committed, and a restart finishes every goal."""

    GOALS, STEPS, DELAY, TTL = 100, 5, 0.04, 1.5
    SLOW_STEP = 3
    """In the first worker this step takes 30 s, so the goals pile up inside it, however
    slowly a loaded machine commits: the kill finds every goal that got there mid-call."""

    async def test_sigkill_mid_step_then_resume(
        self, tmp_path: Path, spawn: Callable[..., Worker]
    ) -> None:
        """100 goals, killed with half of them inside a step: nothing committed is re-run."""
        db, log = tmp_path / "goals.db", tmp_path / "calls.log"
        first = spawn(
            "first",
            *("--create", self.GOALS, "--steps", self.STEPS, "--delay", self.DELAY),
            *("--lease-ttl", self.TTL, "--created", tmp_path / "created"),
            *("--slow-step", self.SLOW_STEP, "--slow-delay", 30),
        )
        await until(lambda: (tmp_path / "created").exists(), 30, "the goals to be created")

        def ripe() -> bool:
            # Kill once steps were committed and at least half the goals are inside a call.
            calls = read_calls(log)
            return sum(c.kind == "E" for c in calls) >= self.GOALS and (
                len({g for g, _, _ in in_flight(calls, first.pid)}) >= self.GOALS // 2
            )

        await until(ripe, 60, f"{self.GOALS // 2} goals inside a step after a first round")
        first.kill()
        assert await first.exited(5) == -signal.SIGKILL

        before = await snapshot(db)
        calls_before = read_calls(log)
        assert len(before) == self.GOALS
        check_event_logs(before)
        done_before = {(g, s) for g, (_, events) in before.items() for s in completed_steps(events)}
        assert done_before, "nothing was committed before the kill"
        assert any(not goal.done for goal, _ in before.values()), "the kill came too late"
        interrupted = in_flight(calls_before, first.pid)
        assert len({g for g, _, _ in interrupted}) >= self.GOALS // 2
        # Everything committed before the kill was returned by a logged call.
        returned = {(c.goal, c.step) for c in calls_before if c.kind == "E"}
        assert done_before <= returned

        second = spawn(
            "second",
            *("--expect", self.GOALS, "--delay", self.DELAY, "--lease-ttl", self.TTL),
        )
        summary = await second.finished(seconds=60)
        assert set(summary["goals"].values()) == {"completed"}
        assert len(summary["goals"]) == self.GOALS

        after = await snapshot(db)
        calls = read_calls(log)
        check_event_logs(after)
        check_completed(after, self.STEPS)
        check_results_match_calls(after, calls)
        # What was stored before the kill is still there, unchanged and numbered the same.
        for goal_id, (_, events) in before.items():
            assert after[goal_id][1][: len(events)] == events
        rerun = {(c.goal, c.step) for c in calls if c.kind == "S" and c.pid == second.pid}
        assert not rerun & done_before, "a step committed before the kill was run again"
        # The calls cut short were run again, with their attempt counted.
        for goal_id, step, attempt in interrupted:
            stored = next(s for s in after[goal_id][0].steps if s.index == step)
            assert stored.attempts > attempt
        runs = Counter((c.goal, c.step) for c in calls if c.kind == "S")
        assert max(runs.values()) <= 2, "a step was run more than twice"
        assert set(runs) == {(g, s) for g in after for s in range(1, self.STEPS + 1)}
        record(
            "crash.sigkill_mid_step",
            goals=self.GOALS,
            steps=self.STEPS,
            kills=1,
            goals_inside_a_step_at_kill=len({g for g, _, _ in interrupted}),
            steps_committed_before_kill=len(done_before),
            committed_steps_rerun=len(rerun & done_before),
            steps_run_twice=sum(n == 2 for n in runs.values()),
            max_runs_of_a_step=max(runs.values()),
            goals_completed=sum(g.status == "completed" for g, _ in after.values()),
            goals_lost=self.GOALS - len(after),
        )

    @pytest.mark.parametrize(
        "kills",
        [pytest.param(3, id="3-kills"), pytest.param(20, id="20-kills", marks=pytest.mark.slow)],
    )
    async def test_kill_restart_cycles(
        self, tmp_path: Path, spawn: Callable[..., Worker], kills: int
    ) -> None:
        """200 goals; workers SIGKILLed at random moments, `kills` times; then one finishes.

        After every kill: the file passes ``PRAGMA integrity_check``, each event log is
        gapless, and no step committed before was run again. At the end every goal has
        completed, each step once in its log, and no goal is active or holds a lease.
        """
        db, log = tmp_path / "goals.db", tmp_path / "calls.log"
        # Enough work that the run outlasts the kills: each costs a start-up and a lease.
        goals, steps, ttl = 200, 3 if kills <= 3 else 10, 1.0
        seed = random.randrange(2**32)
        rng = random.Random(seed)
        committed: set[tuple[str, int]] = set()
        interrupted = 0
        created = tmp_path / "created"
        # Kills at random moments are, by design, what a poison goal looks like; this test is
        # about durability, so the poison bound is lifted (TestPoisonGoals covers it).
        common: list[str | float] = [
            *("--steps", steps, "--delay", 0.15, "--lease-ttl", ttl, "--max-concurrent", 40),
            *("--max-retries", 10, "--max-recoveries", 1000, "--timeout", 180),
        ]
        delivered = 0
        for round_ in range(kills + 1):
            if round_ == 0:  # every goal is stored before the first kill: later rounds expect them
                worker = spawn("worker0", *common, "--create", goals, "--created", created)
                await until(created.exists, 60, "the goals to be created")
            else:
                worker = spawn(f"worker{round_}", *common, "--expect", goals)
            if round_ < kills:
                # Anywhere from start-up (before any claim) to well into the run.
                await anyio.sleep(rng.uniform(0, 2.0))
                if worker.proc.poll() is None:
                    worker.kill()
            code = await worker.exited(180)
            assert code in (0, -signal.SIGKILL), worker.stderr()[-3000:]
            calls = read_calls(log)
            if code != 0:
                delivered += 1
                interrupted += len(in_flight(calls, worker.pid))
            assert integrity(db) == "ok"
            state = await snapshot(db)
            check_event_logs(state)
            ran = {(c.goal, c.step) for c in calls if c.pid == worker.pid and c.kind == "S"}
            assert not ran & committed, "a step committed earlier was run again"
            committed = {(g, s) for g, (_, ev) in state.items() for s in completed_steps(ev)}
            if code == 0:
                break
        else:
            worker = spawn("final", *common, "--expect", goals)
            await worker.finished(seconds=180)
        state = await snapshot(db)
        calls = read_calls(log)
        assert len(state) == goals
        check_completed(state, steps)
        check_results_match_calls(state, calls)
        assert integrity(db) == "ok"
        with closing(sqlite3.connect(db)) as conn:
            assert conn.execute(
                "SELECT count(*) FROM goals WHERE status = 'active' OR lease_owner IS NOT NULL"
            ).fetchone() == (0,)
        runs = Counter((c.goal, c.step) for c in calls if c.kind == "S")
        record(
            "crash.kill_restart_cycles",
            seed=seed,
            goals=goals,
            steps=steps,
            kills_planned=kills,
            kills_delivered=delivered,
            calls_cut_by_kills=interrupted,
            steps_run_more_than_once=sum(n > 1 for n in runs.values()),
            max_runs_of_a_step=max(runs.values()),
            committed_steps_rerun=0,
            integrity_checks_ok=delivered + 1,
            goals_completed=sum(g.status == "completed" for g, _ in state.values()),
            goals_lost=goals - len(state),
        )


def integrity(db: Path) -> str:
    """The answer of ``PRAGMA integrity_check`` on the file (``ok`` when intact)."""
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    return "\n".join(str(row[0]) for row in rows)


class TestPoisonGoals:
    """A goal whose step kills its process every time ends `failed`, not in a crash loop."""

    RECOVERIES, TTL = 2, 0.6

    async def test_poison_goal_fails_after_bounded_recoveries(
        self, tmp_path: Path, spawn: Callable[..., Worker]
    ) -> None:
        """Its step 2 runs 1 + max_recoveries times, then `crash_loop`; its neighbours complete."""
        db, log = tmp_path / "goals.db", tmp_path / "calls.log"
        common: list[str | float] = [
            *("--delay", 0.05, "--lease-ttl", self.TTL, "--max-recoveries", self.RECOVERIES),
        ]
        deaths = 0
        for run in range(self.RECOVERIES + 3):
            if run == 0:
                worker = spawn("run0", "--create", 3, "--poison", 1, "--steps", 3, *common)
            else:
                worker = spawn(f"run{run}", "--expect", 4, *common)
            code = await worker.exited(60)
            if code == 0:
                break
            assert code == -signal.SIGKILL, worker.stderr()[-3000:]
            deaths += 1
        else:
            pytest.fail(f"still crash-looping after {deaths} deaths")
        summary = worker.summary()
        state = await snapshot(db)
        check_event_logs(state)
        poison = [g for g, _ in state.values() if g.description.startswith("poison")]
        healthy = {g.id: (g, ev) for g, ev in state.values() if g not in poison}
        assert len(poison) == 1 and len(healthy) == 3
        (goal,) = poison
        # The neighbours that died with it every time were not blamed: all completed.
        check_completed(healthy, 3)
        assert summary["goals"][goal.id] == "failed"
        assert goal.status == "failed" and goal.error is not None
        assert goal.error.code == "crash_loop"
        assert "stopped 3 times in a row" in goal.error.message
        assert "step 2 ('part 2')" in goal.error.message
        assert "max_recoveries is 2" in goal.error.message
        step = goal.steps[1]
        assert step.status == "failed" and step.error == goal.error
        assert [s.status for s in goal.steps] == ["completed", "failed", "pending"]
        runs = [c for c in read_calls(log) if c.goal == goal.id and c.step == 2]
        assert len(runs) == deaths == self.RECOVERIES + 1
        events = state[goal.id][1]
        assert [e.type for e in events[-2:]] == ["goal.step_failed", "goal.failed"]
        assert events[-2].data["will_retry"] is False
        record(
            "poison.step_kills_its_process",
            max_recoveries=self.RECOVERIES,
            process_deaths=deaths,
            runs_of_the_poison_step=len(runs),
            poison_goal=f"{goal.status} ({goal.error.code})",
            healthy_goals=len(healthy),
            healthy_goals_completed=sum(g.status == "completed" for g, _ in healthy.values()),
        )

    def test_negative_max_recoveries_is_refused(self) -> None:
        """`max_recoveries` below 0 is a ValueError naming it."""
        from goalkit import GoalManager

        with pytest.raises(ValueError, match="max_recoveries must be at least 0"):
            GoalManager("memory://", max_recoveries=-1)


class TestTwoProcesses:
    """Two managers on one file share the work and never run one goal at the same time."""

    GOALS, STEPS = 16, 3

    async def test_no_goal_runs_in_both(self, tmp_path: Path, spawn: Callable[..., Worker]) -> None:
        """Per goal, call intervals of different processes never overlap; each step runs once."""
        db, log = tmp_path / "goals.db", tmp_path / "calls.log"
        common: list[str | float] = ["--delay", 0.04, "--lease-ttl", 2.0, "--max-concurrent", 2]
        b = spawn("b", "--expect", self.GOALS, *common)
        await until(b.ready.exists, 20, "worker b to start")
        a = spawn("a", "--create", self.GOALS, "--steps", self.STEPS, *common)
        summaries = [await a.finished(), await b.finished()]
        for summary in summaries:
            assert set(summary["goals"].values()) == {"completed"}
            assert len(summary["goals"]) == self.GOALS

        calls = read_calls(log)
        state = await snapshot(db)
        check_event_logs(state)
        check_completed(state, self.STEPS)
        check_results_match_calls(state, calls)
        # Nothing crashed: every step ran exactly once, and both processes took a share.
        runs = Counter((c.goal, c.step) for c in calls if c.kind == "S")
        assert set(runs.values()) == {1}
        assert len(runs) == self.GOALS * self.STEPS
        workers = Counter(c.pid for c in calls if c.kind == "E")
        assert set(workers) == {a.pid, b.pid}, workers

        intervals: defaultdict[str, list[tuple[float, float, int]]] = defaultdict(list)
        starts = {(c.goal, c.step, c.attempt, c.pid): c.t for c in calls if c.kind == "S"}
        for c in calls:
            if c.kind == "E":
                intervals[c.goal].append((starts[c.goal, c.step, c.attempt, c.pid], c.t, c.pid))
        for goal_id, spans in intervals.items():
            for s1, e1, p1 in spans:
                for s2, e2, p2 in spans:
                    if p1 != p2:
                        assert e1 <= s2 or e2 <= s1, f"goal {goal_id} ran in {p1} and {p2} at once"


class TestTakeover:
    """The goals of a killed process are taken over by another within the lease time."""

    GOALS, STEPS, DELAY, TTL = 6, 3, 0.3, 1.5
    POLL = min(1.0, TTL / 10)  # the manager's default poll interval

    async def test_killed_owner_is_taken_over(
        self, tmp_path: Path, spawn: Callable[..., Worker]
    ) -> None:
        """B starts each of A's unfinished goals within lease_ttl + poll + slack of A's death."""
        db, log = tmp_path / "goals.db", tmp_path / "calls.log"
        common: list[str | float] = ["--delay", self.DELAY, "--lease-ttl", self.TTL]
        a = spawn("a", "--create", self.GOALS, "--steps", self.STEPS, *common)
        await until(
            lambda: len({c.goal for c in read_calls(log) if c.pid == a.pid}) == self.GOALS,
            20,
            "a to start every goal",
        )
        b = spawn("b", "--expect", self.GOALS, *common)
        await until(b.ready.exists, 20, "worker b to start")
        killed_at = a.kill()
        await a.exited(5)
        assert all(c.pid == a.pid for c in read_calls(log)), "b ran a goal a held"
        orphans = {g for g, (goal, _) in (await snapshot(db)).items() if not goal.done}
        assert orphans, "a finished before it was killed"

        summary = await b.finished(seconds=30)
        assert set(summary["goals"].values()) == {"completed"}
        calls = read_calls(log)
        for goal_id in orphans:
            first = min(c.t for c in calls if c.goal == goal_id and c.pid == b.pid)
            assert killed_at < first <= killed_at + self.TTL + self.POLL + SLACK, goal_id
        state = await snapshot(db)
        check_event_logs(state)
        check_completed(state, self.STEPS)
        check_results_match_calls(state, calls)


def _new_goal() -> Goal:
    return Goal(
        id=new_goal_id(),
        workflow_id=new_workflow_id(),
        description="fenced",
        model="recorded",
        mode="plan",
        max_steps=3,
        max_retries=2,
        tags=(),
        owner="local",
        status="active",
        phase="created",
        created_at=int(time.time()),
        updated_at=int(time.time()),
    )


class TestFencing:
    """An owner whose lease was taken over cannot write anything."""

    async def test_stale_owner_commit_raises_lease_lost(self, tmp_path: Path) -> None:
        """A's lease expires, B claims the goal, A's commit raises LeaseLost and writes nothing."""
        db = tmp_path / "goals.db"
        async with storage(db) as a, storage(db) as b:
            await a.create_goal(transitions.create(_new_goal()))
            (goal,) = await a.claim_goals("owner-a", ttl=0.3, limit=10)
            # While A's lease runs, B gets nothing and cannot write as if it held it.
            assert await b.claim_goals("owner-b", ttl=5, limit=10) == []
            with pytest.raises(LeaseLost):
                await b.commit(transitions.decomposing(goal, int(time.time()), lease="owner-b"))
            await anyio.sleep(0.4)
            (taken,) = await b.claim_goals("owner-b", ttl=5, limit=10)
            assert taken.id == goal.id

            stale = transitions.decomposed(
                goal, (StepSpec("x"),), int(time.time()), lease="owner-a"
            )
            with pytest.raises(LeaseLost):
                await a.commit(stale)
            assert await a.renew_leases("owner-a", [goal.id], ttl=5) == set()
            await a.release_leases("owner-a", [goal.id])  # must not free B's lease

            stored = await b.get_goal(goal.id)
            assert stored is not None
            assert (stored.phase, stored.total_steps, stored.steps, stored.last_event_id) == (
                "created",
                0,
                (),
                1,
            )
            assert [e.type for e in await b.read_events(goal.id)] == ["goal.created"]
            # B still holds the lease and writes.
            (event,) = await b.commit(
                transitions.decomposed(stored, (StepSpec("y"),), int(time.time()), lease="owner-b")
            )
            assert event.id == 2
            assert await b.renew_leases("owner-b", [goal.id], ttl=5) == {goal.id}

    async def test_frozen_owner_writes_nothing_after_takeover(
        self, tmp_path: Path, spawn: Callable[..., Worker]
    ) -> None:
        """A is SIGSTOPped mid-step past its lease; after B finishes and A resumes, A wrote nothing.

        A holds 8 goals, each with a call in flight that ignores cancellation, so once
        resumed A really has 8 results in hand and tries to write them: the store must stay
        exactly as B left it.
        """
        db, log = tmp_path / "goals.db", tmp_path / "calls.log"
        goals, steps, ttl = 8, 4, 1.0
        common: list[str | float] = ["--delay", 0.4, "--lease-ttl", ttl, "--stubborn"]
        a = spawn("a", "--create", goals, "--steps", steps, *common)
        await until(lambda: bool(read_calls(log)), 20, "a to start the goals")
        b = spawn("b", "--expect", goals, *common)
        await until(b.ready.exists, 20, "worker b to start")
        await until(
            lambda: len(in_flight(read_calls(log), a.pid)) == goals, 20, "a call of a per goal"
        )
        a.kill(signal.SIGSTOP)
        frozen = {g: (step, attempt) for g, step, attempt in in_flight(read_calls(log), a.pid)}
        assert len(frozen) == goals
        assert all(c.pid == a.pid for c in read_calls(log)), "b ran a goal a held"

        await b.finished(seconds=60)
        taken_over_at = min(c.t for c in read_calls(log) if c.pid == b.pid)
        state = await snapshot(db)
        a.kill(signal.SIGCONT)
        await a.finished(seconds=60)  # a sees its goals completed (by b) and exits cleanly

        # a's stubborn calls did return results after the takeover ...
        calls = read_calls(log)
        late = {
            c.goal
            for c in calls
            if c.kind == "E"
            and c.pid == a.pid
            and c.t > taken_over_at
            and (c.step, c.attempt) == frozen[c.goal]
        }
        assert late == set(frozen)
        # ... and nothing of them reached the store: it is exactly as b left it.
        assert await snapshot(db) == state
        check_event_logs(state)
        check_completed(state, steps)
        check_results_match_calls(state, calls)
        for goal_id, (goal, events) in state.items():
            frozen_step, frozen_attempt = frozen[goal_id]
            for step in goal.steps:
                expected = a.pid if step.index < frozen_step else b.pid
                assert step.result["pid"] == expected, step  # type: ignore[index]
            again = next(s for s in goal.steps if s.index == frozen_step)
            assert again.attempts == frozen_attempt + 1
            started = [e.data["step"] for e in events if e.type == "goal.step_started"]
            assert started == sorted([*range(1, steps + 1), frozen_step])
        record(
            "fencing.sigstop_past_lease",
            goals=goals,
            calls_in_flight_at_sigstop=len(frozen),
            late_results_returned_after_sigcont=len(late),
            late_writes_accepted=0,
            goals_completed=sum(g.status == "completed" for g, _ in state.values()),
        )


class TestSelfFencing:
    """A manager that cannot renew its leases stops its provider calls before they expire."""

    TTL = 0.6

    async def test_failed_heartbeats_stop_calls_before_takeover(self, tmp_path: Path) -> None:
        """A's renewals fail; B takes the goal over: A's call must have stopped by then."""
        from goalkit import GoalManager, StorageError, hookimpl

        spans: list[tuple[str, float, float]] = []

        class SlowProvider:
            def __init__(self, name: str) -> None:
                self.name = name

            @hookimpl
            def goalkit_model_provider(self, model: str) -> SlowProvider | None:
                return self if model == "slow" else None

            async def plan(self, goal: Goal, max_steps: int) -> list[str]:
                return ["only"]

            async def run_step(self, goal: Goal, step: Any, previous: Any) -> str:
                start = time.monotonic()
                try:  # a's calls outlast its lease; b's are quick
                    await anyio.sleep(4 * TestSelfFencing.TTL if self.name == "a" else 0.05)
                finally:
                    spans.append((self.name, start, time.monotonic()))
                return self.name

        class NoRenewals:
            """Serves ``norenew+sqlite:///``: SQLite whose lease renewals always fail."""

            @hookimpl
            def goalkit_storage(self, url: str) -> Any:
                if not url.startswith("norenew+"):
                    return None
                inner = SQLiteStorage(url.removeprefix("norenew+sqlite:///"))

                class Flaky:
                    def __getattr__(self, name: str) -> Any:
                        return getattr(inner, name)

                    async def renew_leases(self, *args: Any, **kwargs: Any) -> set[str]:
                        raise StorageError("disk I/O error (injected)")

                return Flaky()

        db = tmp_path / "goals.db"
        options: dict[str, Any] = {"lease_ttl": self.TTL, "entry_points": False}
        async with GoalManager(
            f"norenew+sqlite:///{db}", plugins=[SlowProvider("a"), NoRenewals()], **options
        ) as a:
            goal = await a.create("slow goal", model="slow")
            async with GoalManager(f"sqlite:///{db}", plugins=[SlowProvider("b")], **options) as b:
                done = await b.wait(goal.id, timeout=10)
                assert done.status == "completed"
                assert done.result == "b"
        assert {name for name, _, _ in spans} == {"a", "b"}
        for name1, start1, end1 in spans:
            for name2, start2, end2 in spans:
                if name1 != name2:
                    assert end1 <= start2 or end2 <= start1, (
                        f"{name1} ran from {start1:.2f} to {end1:.2f}, {name2} from "
                        f"{start2:.2f} to {end2:.2f}: both ran the goal at once"
                    )

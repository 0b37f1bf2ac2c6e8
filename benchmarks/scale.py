"""Lookups with 1,000 vs 100,000 goals stored, the cost of kept totals, waiting goals' memory.

    python benchmarks/scale.py                # 1,000 vs 100,000 goals; 10,000 waiting goals
    python benchmarks/scale.py --quick        # 1,000 vs 10,000; 1,000 waiting goals

Part one fills two SQLite stores (through `SQLiteStorage.create_goal`, four owners, a tag on
every third goal, three goals in four then marked completed by one UPDATE) and times, through
the storage API the manager calls: `get_goal`, the first page (50) of `list_goals` unfiltered,
by owner, by status, by tag, by owner and status and by owner and tag, `goals_by_workflow`,
and a deep page (90 % of the goals down) asked for by offset and by cursor. Each lookup is
timed in batches of 4 calls alternating between the small and the large store, so that load
from elsewhere on the machine falls on both alike; medians of 1,000 calls each (100 for the
deep pages); the ratio of the large store to the small one; and `EXPLAIN QUERY PLAN` of the
queries the backend runs, to show which index serves each.

Part two times what the triggers that keep listing totals (``0005_goal_counts``) add to the
backend's own write statements: creating a goal, a commit that keeps its status and one
that changes it, with 0, 3 and 20 tags, against the same file with the triggers dropped;
and 3-step workflows one at a time through `GoalManager` with and without them.

Part three starts a `GoalManager` whose provider never answers (each step waits on an event)
with `max_concurrent` high enough to run them all, creates N goals, waits until every one is
inside its provider call, and reports the growth of the process's resident memory divided by N.

The whole run is pinned to one CPU (on Linux), so that where the OS places each store's
thread does not decide which store looks faster.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

from goalkit import GoalManager, hookimpl, transitions
from goalkit.models import Goal, encode_cursor, new_goal_id, new_workflow_id
from goalkit.storage.sqlite import (
    _COUNT,
    _GOAL_COLUMNS,
    _INSERT_GOAL,
    _UPDATE_GOAL,
    SQLiteStorage,
    _list_query,
)

OWNERS = ("alice", "bob", "carol", "dave")


def _goal(i: int) -> Goal:
    now = int(time.time())
    return Goal(
        id=new_goal_id(),
        workflow_id=new_workflow_id(),
        description=f"goal {i}",
        model="scripted",
        mode="plan",
        max_steps=10,
        max_retries=2,
        tags=("nightly",) if i % 3 == 0 else (),
        owner=OWNERS[i % len(OWNERS)],
        status="active",
        phase="created",
        created_at=now,
        updated_at=now,
    )


async def _fill(store: SQLiteStorage, n: int) -> list[Goal]:
    goals = [_goal(i) for i in range(n)]
    for start in range(0, n, 2000):  # 2,000 creates in flight: group commit makes it quick
        async with anyio.create_task_group() as tg:
            for goal in goals[start : start + 2000]:
                tg.start_soon(store.create_goal, transitions.create(goal))
    conn = sqlite3.connect(store.path)
    with conn:
        conn.execute(
            "UPDATE goals SET status = 'completed', phase = 'completed' WHERE seq % 4 != 0"
        )
    conn.execute("ANALYZE")
    conn.close()
    return goals


async def _timed(call: Callable[[], Awaitable[Any]], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        await call()
        times.append(time.perf_counter() - start)
    return times


Calls = dict[str, tuple[Callable[[], Awaitable[Any]], int]]


def _calls(store: SQLiteStorage, goals: list[Goal]) -> Calls:
    n = len(goals)
    probe = goals[n // 2]
    deep = n * 9 // 10
    # The cursor a client holds after reading `deep` goals newest first: the same page.
    below = encode_cursor(n - deep + 1)
    return {
        "get": (lambda: store.get_goal(probe.id), 1000),
        "list, first page (50), with its total": (lambda: store.list_goals(), 1000),
        "list by owner": (lambda: store.list_goals(owner="bob"), 1000),
        "list by status": (lambda: store.list_goals(status="active"), 1000),
        "list by tag": (lambda: store.list_goals(tag="nightly"), 1000),
        # The fill leaves none of bob's goals active: finding that must not walk his
        # ended ones.
        "list by owner and status": (lambda: store.list_goals(owner="bob", status="active"), 1000),
        "list by owner and tag": (lambda: store.list_goals(owner="alice", tag="nightly"), 1000),
        "by_workflow": (lambda: store.goals_by_workflow(probe.workflow_id), 1000),
        f"deep page by offset ({deep:,})": (lambda: store.list_goals(offset=deep), 100),
        "deep page by cursor (same page)": (lambda: store.list_goals(cursor=below), 100),
    }


async def lookups(small: int, large: int, tmp: Path) -> dict[str, tuple[float, float]]:
    """Median µs of each lookup on a store of `small` and one of `large` goals."""
    stores = [SQLiteStorage(tmp / "small.db"), SQLiteStorage(tmp / "large.db")]
    try:
        calls = []
        for store, n in zip(stores, (small, large), strict=True):
            await store.open()
            calls.append(_calls(store, await _fill(store, n)))
            print(f"filled {n:,} goals", file=sys.stderr)
        deep_offset = await calls[1][f"deep page by offset ({large * 9 // 10:,})"][0]()
        deep_cursor = await calls[1]["deep page by cursor (same page)"][0]()
        assert deep_offset.items == deep_cursor.items  # the two ask for one page
        results = {}
        batch = 4  # calls in a row on one store: short, so load bursts fall on both
        for (a, _), (name, (b, repeat)) in zip(calls[0].values(), calls[1].items(), strict=True):
            await a()  # warm the caches
            await b()
            times: tuple[list[float], list[float]] = ([], [])
            for _ in range(repeat // batch):
                times[0].extend(await _timed(a, batch))
                times[1].extend(await _timed(b, batch))
            results[name] = (
                statistics.median(times[0]) * 1e6,
                statistics.median(times[1]) * 1e6,
            )
        return results
    finally:
        for store in stores:
            await store.close()


def _plan_queries() -> dict[str, tuple[str, list[Any]]]:
    """The queries the backend runs for the lookups above, with sample parameters."""
    cursor = encode_cursor(1000)

    def listing(**filters: Any) -> tuple[str, list[Any]]:
        sql, params = _list_query(
            filters.get("owner"), filters.get("status"), filters.get("tag"), filters.get("cursor")
        )
        return sql, [*params, 51, 0]

    return {
        "get": (f"SELECT {_GOAL_COLUMNS} FROM goals WHERE id = ?", ["x"]),
        "a listing's total (any filters)": (_COUNT, ["bob", "active", "nightly"]),
        "list, first page": listing(),
        "list by owner": listing(owner="bob"),
        "list by status": listing(status="active"),
        "list by tag": listing(tag="nightly"),
        "list by owner and status": listing(owner="bob", status="active"),
        "by cursor": listing(cursor=cursor),
        "by owner, by cursor": listing(owner="bob", cursor=cursor),
        "by status, by cursor": listing(status="active", cursor=cursor),
        "by tag, by cursor": listing(tag="nightly", cursor=cursor),
        "by_workflow": ("SELECT id FROM goals WHERE workflow_id = ? ORDER BY seq", ["wf-x"]),
    }


def plans(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    lines = []
    for name, (sql, params) in _plan_queries().items():
        steps = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
        lines.append(f"- {name}: `{'; '.join(steps)}`")
    conn.close()
    return lines


def trigger_cost(tmp: Path, n: int) -> list[tuple[int, float, float, float]]:
    """µs per goal the count triggers add to the backend's own statements: (tags, insert,
    a commit that keeps the status, a commit that changes it). Two migrated files, one with
    the triggers dropped; each statement run `n` times in one transaction, alternating
    between the files, best of 9 (the fixed cost, not the noise)."""
    paths = [tmp / "triggers.db", tmp / "no-triggers.db"]
    for path in paths:
        store = SQLiteStorage(path)
        anyio.run(store.open)
        anyio.run(store.close)
    conns = [sqlite3.connect(path, isolation_level=None) for path in paths]
    for (name,) in (
        conns[1]
        .execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'goals'")
        .fetchall()
    ):
        conns[1].execute(f"DROP TRIGGER {name}")
    results = []
    for tags in (0, 3, 20):
        best = [[float("inf")] * 3 for _ in conns]
        for _ in range(9):
            for conn, row in zip(conns, best, strict=True):
                for i, took in enumerate(_write_loop(conn, n, tags)):
                    row[i] = min(row[i], took)
        results.append((tags, *(a - b for a, b in zip(*best, strict=True))))
    for conn in conns:
        conn.close()
    return results


async def trigger_cost_workflows(tmp: Path, rounds: int) -> tuple[float, float]:
    """Median µs per 3-step workflow, one at a time through `GoalManager` (the zero-latency
    provider of compare.py), with the count triggers and without: two managers in this
    process on two files, the second with its triggers dropped, in alternating batches of
    100 so that load from elsewhere falls on both alike."""
    from engine import make_plugins  # benchmarks/engine.py: the zero-latency provider

    counts: Counter[str] = Counter()

    def manager(path: Path) -> GoalManager:
        return GoalManager(
            f"sqlite:///{path}",
            plugins=make_plugins(counts),
            entry_points=False,
            default_model="zero",
            max_concurrent=1,
        )

    async with manager(tmp / "with.db") as a, manager(tmp / "without.db") as b:
        with contextlib.closing(sqlite3.connect(tmp / "without.db")) as conn:
            names = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            for (name,) in names.fetchall():
                conn.execute(f"DROP TRIGGER {name}")
            conn.commit()
        times: tuple[list[float], list[float]] = ([], [])
        for i in range(rounds + 1):
            for which in (0, 1) if i % 2 else (1, 0):
                start = time.perf_counter()
                for _ in range(100):
                    goal = await (a, b)[which].create("a 3-step no-op workflow")
                    await (a, b)[which].wait(goal.id)
                if i:  # the first round warms up
                    times[which].append((time.perf_counter() - start) / 100 * 1e6)
    return statistics.median(times[0]), statistics.median(times[1])


def _write_loop(conn: sqlite3.Connection, n: int, tags: int) -> list[float]:
    """µs per goal of: creating it (goal row and goal_tags), a commit keeping its status,
    and one ending it, with the statements `SQLiteStorage` runs."""
    tag_list = [f"tag{i}" for i in range(tags)]
    now = int(time.time())
    times = []
    conn.execute("BEGIN IMMEDIATE")
    start = time.perf_counter()
    seqs = []
    for i in range(n):
        row = (new_goal_id(), new_workflow_id(), "d", "m", "plan", 10, 2, json.dumps(tag_list))
        row += (OWNERS[i % 4], "active", "created", 0, 0, None, None, None, now, now, None)
        seq = conn.execute(_INSERT_GOAL, (*row, None, 0, 0)).lastrowid
        conn.executemany(
            "INSERT INTO goal_tags (tag, seq) VALUES (?, ?)", [(t, seq) for t in tag_list]
        )
        seqs.append(seq)
    times.append(time.perf_counter() - start)
    for status in ("active", "completed"):
        start = time.perf_counter()
        for seq in seqs:
            conn.execute(
                _UPDATE_GOAL,
                (status, "running", 1, 0, 1, None, None, now, None, 2, 0, 0, 0, False, False, seq),
            )
        times.append(time.perf_counter() - start)
    conn.execute("ROLLBACK")
    return [t / n * 1e6 for t in times]


class _Stuck:
    """Model ``stuck``: a one-step plan whose step waits until the manager closes."""

    def __init__(self) -> None:
        self.inside = 0
        self.target = 1
        self.reached = anyio.Event()

    def expect(self, target: int) -> None:
        """Set `reached` once `target` calls are inside `run_step`."""
        self.target, self.reached = target, anyio.Event()

    @hookimpl
    def goalkit_model_provider(self, model: str) -> _Stuck | None:
        return self if model == "stuck" else None

    async def plan(self, goal: Any, max_steps: int) -> list[str]:
        return ["wait"]

    async def run_step(self, goal: Any, step: Any, previous: Sequence[Any]) -> str:
        self.inside += 1
        if self.inside >= self.target:
            self.reached.set()
        await anyio.sleep_forever()
        return "never"


def _rss_kib() -> int:
    """The process's resident memory now (Linux), else its peak so far."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def waiting(n: int, db: Path) -> float:
    provider = _Stuck()
    async with GoalManager(
        f"sqlite:///{db}",
        plugins=[provider],
        entry_points=False,
        default_model="stuck",
        max_concurrent=n + 1,  # the warm-up goal holds a slot too
        step_timeout=None,
        lease_ttl=600,
    ) as manager:
        provider.expect(1)
        await manager.create("warm-up")
        await provider.reached.wait()
        before = _rss_kib()
        provider.expect(n + 1)
        for i in range(n):
            await manager.create(f"waiting goal {i}", mode="direct")
        await provider.reached.wait()
        after = _rss_kib()
    return (after - before) / n


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 goals, 1,000 waiting")
    args = parser.parse_args(argv)
    small, large = 1000, (10_000 if args.quick else 100_000)
    waiters = 1000 if args.quick else 10_000
    # One CPU for the whole run (where the OS allows it): each storage call hands off from
    # the event loop to a store's thread and back, which costs about 50 µs when both run on
    # one core and 115 µs when the OS puts them on two, whatever the store (two stores of
    # 1,000 goals measured 58 and 121 µs). Pinned, two stores differ only by what they hold.
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # threads inherit it
    with tempfile.TemporaryDirectory(prefix="goalkit-scale-") as tmp:
        timings = anyio.run(lookups, small, large, Path(tmp))
        plan_lines = plans(Path(tmp) / "large.db")
        triggers = trigger_cost(Path(tmp), 500)
        workflow = anyio.run(trigger_cost_workflows, Path(tmp), 30)
        per_goal = anyio.run(waiting, waiters, Path(tmp) / "waiting.db")
    lines = [
        f"| lookup (storage API) | {small:,} goals, µs | {large:,} goals, µs | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, (a, b) in timings.items():
        lines.append(f"| {name} | {a:,.0f} | {b:,.0f} | {b / a:.2f} |")
    lines += ["", f"EXPLAIN QUERY PLAN with {large:,} goals:", "", *plan_lines, ""]
    lines += [
        "What the count triggers add to each write (µs per goal, best of 9):",
        "",
        "| tags | create | commit, same status | commit, new status |",
        "| ---: | ---: | ---: | ---: |",
        *(f"| {t} | {a:+.1f} | {b:+.1f} | {c:+.1f} |" for t, a, b, c in triggers),
        "",
        f"One 3-step workflow at a time through GoalManager: {workflow[0]:,.0f} µs with the "
        f"triggers, {workflow[1]:,.0f} µs without ({workflow[0] / workflow[1] - 1:+.1%}).",
        "",
    ]
    lines.append(
        f"{waiters:,} goals waiting inside a provider call: {per_goal:.1f} KiB of resident memory each."
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Engine throughput: goals and steps per second on a SQLite file, with a zero-latency provider.

    python benchmarks/engine.py                 # default run (< 2 minutes on 2 cores)
    python benchmarks/engine.py --quick         # a smoke run of a few seconds
    python benchmarks/engine.py --goals 1000 --repeat 5

Workloads, each through the public API (`GoalManager` on ``sqlite:///…`` in a temporary
directory, the default ``synchronous=NORMAL``, WAL):

* ``plan``: 3-step goals (the provider's `plan` returns 3 titles);
* ``direct``: 1-step goals (no `plan` call);

each run two ways: one at a time (``create`` then ``wait``, goal after goal) and 100 at once
(``create`` 100 goals, then ``wait`` for all of them, until N goals are done).

The provider is a plugin defined here: no sleep, ``run_step`` returns a short string. Commits
are counted as a plugin author would: a `goalkit_storage` plugin serves ``counted+sqlite:///``
by wrapping the built-in `SQLiteStorage` and counting its calls. "transitions/goal" counts
`create_goal` + `commit` calls, the storage writes a goal waits for (a commit may chain two
transitions, such as a step completed and the next one started; group commit then puts the
writes of many goals in one SQLite transaction); "write txns/goal" adds the lease writes
(`claim_goals`, `renew_leases`, `release_leases`).

Baseline, measured in the same run: a plain `sqlite3` loop (no asyncio, no threads) writing the
same number of event rows per goal as goalkit stores (9 for ``plan``, 5 for ``direct``), one
commit per row, with the same durability setting (WAL, ``synchronous=NORMAL``). goalkit's
figures are given as a ratio of it.

Every measurement runs in a fresh child process (so start-up and imports are not timed, and
its peak RSS, from `resource.getrusage`, belongs to that scenario alone); medians of
``--repeat`` runs, with min–max. The table is printed and written to
``benchmarks/results/engine.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from report import machine, spread

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "engine.md"
BATCH = 100
EVENTS = {"plan": 9, "direct": 5}
"""Events goalkit stores per goal: created, decomposed, started+completed per step, completed."""
STEPS = {"plan": 3, "direct": 1}


# -- the plugins --------------------------------------------------------------------------------


def make_plugins(counts: Counter[str], synchronous: str = "NORMAL") -> list[object]:
    """The zero-latency provider and the commit-counting storage, as goalkit plugins.

    The storage serves ``counted+sqlite:///path`` at the given `synchronous` level.
    """
    from goalkit import hookimpl
    from goalkit.storage.sqlite import SQLiteStorage

    class ZeroProvider:
        """Model ``zero``: a 3-step plan and an instant result per step."""

        @hookimpl
        def goalkit_model_provider(self, model: str) -> ZeroProvider | None:
            return self if model == "zero" else None

        async def plan(self, goal: Any, max_steps: int) -> list[str]:
            return ["gather", "draft", "review"]

        async def run_step(self, goal: Any, step: Any, previous: Sequence[Any]) -> str:
            return "ok"

    class CountingStorage:
        """A `SQLiteStorage` whose write calls are counted (methods bound once, so counting
        costs a counter increment per call, not a new closure)."""

        def __init__(self, inner: SQLiteStorage) -> None:
            self.inner = inner
            for name in ("create_goal", "commit", "claim_goals", "renew_leases", "release_leases"):
                setattr(self, name, self._counted(name, getattr(inner, name)))

        @staticmethod
        def _counted(name: str, call: Any) -> Any:
            async def counted(*args: Any, **kwargs: Any) -> Any:
                counts[name] += 1
                return await call(*args, **kwargs)

            return counted

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    class CountingPlugin:
        @hookimpl
        def goalkit_storage(self, url: str) -> CountingStorage | None:
            prefix = "counted+sqlite:///"
            if not url.startswith(prefix):
                return None
            path = url.removeprefix(prefix)
            return CountingStorage(SQLiteStorage(path, synchronous=synchronous))  # type: ignore[arg-type]

    return [ZeroProvider(), CountingPlugin()]


# -- one measurement (in a child process) -------------------------------------------------------


async def _goalkit(workload: str, batch: int, goals: int, db: Path) -> dict[str, Any]:
    from goalkit import GoalManager

    counts: Counter[str] = Counter()
    async with GoalManager(
        f"counted+sqlite:///{db}",
        plugins=make_plugins(counts),
        entry_points=False,
        default_model="zero",
        retry_backoff=0,
    ) as manager:
        warm = await manager.create("warm-up", mode=workload)  # connection, caches, threads
        await manager.wait(warm.id)
        counts.clear()
        ids: list[str] = []
        start = time.perf_counter()
        while len(ids) < goals:
            group = [
                (await manager.create(f"goal {len(ids) + i}", mode=workload)).id
                for i in range(min(batch, goals - len(ids)))
            ]
            for goal_id in group:
                await manager.wait(goal_id)
            ids += group
        elapsed = time.perf_counter() - start
        page = await manager.list(status="completed", limit=1)
    counts.pop("release_leases", None)  # at shutdown, after the clock stopped
    assert page.total == goals + 1, f"{page.total - 1} of {goals} goals completed"
    return {
        "elapsed": elapsed,
        "transitions": counts["create_goal"] + counts["commit"],
        "writes": sum(counts.values()),
    }


def _baseline(workload: str, goals: int, db: Path) -> dict[str, Any]:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(
        "CREATE TABLE events (goal_id TEXT NOT NULL, id INTEGER NOT NULL, type TEXT NOT NULL,"
        " ts REAL NOT NULL, data TEXT NOT NULL, PRIMARY KEY (goal_id, id)) WITHOUT ROWID"
    )
    rows = EVENTS[workload]
    data = json.dumps({"step": 1, "title": "draft", "attempt": 1, "result": "ok"})
    start = time.perf_counter()
    for g in range(goals):
        goal_id = f"goal-{g:016x}"
        for n in range(1, rows + 1):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                (goal_id, n, "goal.step_completed", time.time(), data),
            )
            conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return {"elapsed": elapsed, "transitions": goals * rows, "writes": goals * rows}


def child(scenario: str, workload: str, goals: int) -> None:
    """Run one measurement and print it as JSON."""
    with tempfile.TemporaryDirectory(prefix="goalkit-bench-") as tmp:
        db = Path(tmp) / "bench.db"
        if scenario == "baseline":
            result = _baseline(workload, goals, db)
        else:
            import anyio

            batch = 1 if scenario == "sequential" else BATCH
            result = anyio.run(_goalkit, workload, batch, goals, db)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


# -- the driver ---------------------------------------------------------------------------------


def measure(scenario: str, workload: str, goals: int) -> dict[str, Any]:
    answer = subprocess.run(
        [sys.executable, __file__, "--child", scenario, workload, "--goals", str(goals)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(answer.stdout)


def table(goals: int, repeat: int) -> str:
    scenarios = [
        ("baseline", "plan", "sqlite3 loop, 9 commits/goal"),
        ("baseline", "direct", "sqlite3 loop, 5 commits/goal"),
        ("sequential", "plan", "goalkit, one at a time"),
        ("batch", "plan", f"goalkit, {BATCH} at once"),
        ("sequential", "direct", "goalkit, one at a time"),
        ("batch", "direct", f"goalkit, {BATCH} at once"),
    ]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in range(repeat):
        for scenario, workload, label in scenarios:  # interleaved: drift hits all alike
            print(f"run {r + 1}/{repeat}: {workload} {label} …", file=sys.stderr, flush=True)
            runs.setdefault((scenario, workload), []).append(measure(scenario, workload, goals))

    baseline = {
        w: statistics.median(goals / x["elapsed"] for x in runs["baseline", w]) for w in EVENTS
    }
    lines = [
        f"goalkit engine benchmark: {goals} goals per run, median (min–max) of {repeat} runs; "
        f"SQLite file in a temp dir, WAL, synchronous=NORMAL; zero-latency provider plugin.",
        "",
        "| workload | system | goals/s | steps/s | ms/goal | transitions/goal | "
        "write txns/goal | × sqlite3 loop | peak RSS MiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for scenario, workload, label in scenarios:
        results = runs[scenario, workload]
        rate = statistics.median(goals / x["elapsed"] for x in results)
        rate_text = spread(goals / x["elapsed"] for x in results)
        steps_text = spread(goals * STEPS[workload] / x["elapsed"] for x in results)
        ms_text = spread((x["elapsed"] * 1000 / goals for x in results), "{:.2f}")
        transitions = statistics.median(x["transitions"] / goals for x in results)
        writes = statistics.median(x["writes"] / goals for x in results)
        rss = statistics.median(x["peak_rss_mib"] for x in results)
        ratio = rate / baseline[workload]
        name = f"`{workload}` ({STEPS[workload]} step{'s' if STEPS[workload] > 1 else ''})"
        steps_cell = "—" if scenario == "baseline" else steps_text
        lines.append(
            f"| {name} | {label} | {rate_text} | {steps_cell} | {ms_text} | {transitions:.2f} | "
            f"{writes:.2f} | {ratio:.3f} | {rss:.0f} |"
        )
    lines += [
        "",
        "transitions/goal: `create_goal` + `commit` calls, the writes a goal waits for (a "
        "commit may chain two transitions; group commit shares SQLite transactions); "
        "write txns/goal adds the lease writes (`claim_goals`, `renew_leases`), "
        "counted by a `goalkit_storage` plugin wrapping `SQLiteStorage`. "
        "× sqlite3 loop: goals/s as a ratio of the plain sqlite3 loop writing the same number "
        "of event rows per goal, one commit each, same durability. Peak RSS: the child "
        "process of that run (`getrusage`).",
        "",
        machine(),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--goals", type=int, help="goals per run (default 1000; 50 with --quick)")
    parser.add_argument("--repeat", type=int, help="runs per figure (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a few seconds: a smoke run")
    parser.add_argument(
        "--child", nargs=2, metavar=("SCENARIO", "WORKLOAD"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    goals = args.goals or (50 if args.quick else 1000)
    if args.child:
        child(*args.child, goals)
        return
    repeat = args.repeat or (1 if args.quick else 3)
    if goals < 1 or repeat < 1:
        parser.error("--goals and --repeat must be at least 1")
    text = table(goals, repeat)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(f"written to {RESULTS.relative_to(HERE.parent)}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""goalkit beside LangGraph, DBOS and two plain sqlite3 loops, on one 3-step no-op workflow.

    bash benchmarks/run                      # creates benchmarks/.venv with the peers, runs this
    python benchmarks/compare.py --quick     # 50 workflows, 1 run: a smoke test
    python benchmarks/compare.py --workflows 2000 --repeat 5

The workflow: three steps that do nothing, each recorded durably on a SQLite file in a
temporary directory, N workflows per run (default 1,000), every system in the same run:

* goalkit through its public API (`GoalManager.create` + `wait`), with a zero-latency provider
  plugin whose plan has 3 steps: one workflow at a time, and 50 and 100 in flight (that many
  tasks each creating and waiting for goals until N are done); at the default durability
  (``synchronous=NORMAL``) and at ``?synchronous=FULL``;
* LangGraph + ``SqliteSaver`` (a `StateGraph` of three nodes, one thread id per workflow),
  one at a time; LangGraph + ``AsyncSqliteSaver``, 50 in flight;
* DBOS Transact on SQLite (a ``@DBOS.workflow`` calling three ``@DBOS.step`` functions), one at
  a time and from 50 threads;
* a plain sqlite3 loop writing 9 event rows per workflow (as many events as goalkit stores),
  one commit each, one workflow at a time;
* goalkit's SQL alone: the statements its SQLite backend runs for the workflow, 100
  workflows per transaction, in one thread with no engine at all: the ceiling of goalkit's
  storage design (its schema keeps a goal row and step rows beside the event log);
* a lean asyncio + sqlite3 group-commit loop: 100 workflows in flight, each awaiting the commit
  of its 9 events one after another, one writer batching all pending rows into one
  transaction per worker-thread hop: the floor any engine on this design can reach.

Peers are optional: a system whose package is missing (see ``benchmarks/requirements.txt``)
is skipped with a note. They are never goalkit dependencies.

Each measurement runs in a fresh child process (imports and start-up are not timed; its peak
RSS is its own); figures are medians of ``--repeat`` runs with min–max, runs interleaved so
load drift hits every system alike. The table and the ratios of the performance targets are
printed and written to ``benchmarks/results/compare.md``.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from report import machine, spread

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "compare.md"
STEPS = 3
EVENTS = 9
"""Events goalkit stores per workflow: created, decomposed, 3 x (started, completed), completed."""


# -- goalkit -----------------------------------------------------------------------------------


def _goalkit(in_flight: int, n: int, db: Path, synchronous: str) -> dict[str, Any]:
    import anyio

    sys.path.insert(0, str(HERE))
    from engine import make_plugins  # the zero-latency provider and the counting storage

    from goalkit import GoalManager

    async def main() -> dict[str, Any]:
        counts: Counter[str] = Counter()
        async with GoalManager(
            f"counted+sqlite:///{db}",
            plugins=make_plugins(counts, synchronous),
            entry_points=False,
            default_model="zero",
            max_concurrent=max(in_flight, 1),
        ) as manager:
            warm = await manager.create("warm-up")
            await manager.wait(warm.id)
            counts.clear()
            left = n

            async def worker() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    goal = await manager.create("a 3-step no-op workflow")
                    await manager.wait(goal.id)

            start = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(in_flight):
                    tg.start_soon(worker)
            elapsed = time.perf_counter() - start
            page = await manager.list(status="completed", limit=1)
        assert page.total == n + 1, f"{page.total - 1} of {n} completed"
        writes = sum(v for k, v in counts.items() if k != "release_leases")
        return {"elapsed": elapsed, "commits": writes / n}

    return anyio.run(main)


# -- plain sqlite3 -----------------------------------------------------------------------------

_EVENTS_TABLE = (
    "CREATE TABLE events (goal_id TEXT NOT NULL, id INTEGER NOT NULL, type TEXT NOT NULL,"
    " ts REAL NOT NULL, data TEXT NOT NULL, PRIMARY KEY (goal_id, id)) WITHOUT ROWID"
)
_DATA = json.dumps({"step": 1, "title": "draft", "attempt": 1, "result": "ok"})


def _connect(db: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(_EVENTS_TABLE)
    return conn


def _sqlite_loop(n: int, db: Path, synchronous: str) -> dict[str, Any]:
    conn = _connect(db, synchronous)
    start = time.perf_counter()
    for g in range(n):
        for e in range(1, EVENTS + 1):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                (f"goal-{g}", e, "goal.step_completed", time.time(), _DATA),
            )
            conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return {"elapsed": elapsed, "commits": float(EVENTS)}


def _group_commit_loop(in_flight: int, n: int, db: Path, synchronous: str) -> dict[str, Any]:
    import asyncio

    conn = _connect(db, synchronous)
    commits = 0

    def write(rows: list[tuple[Any, ...]]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")

    async def main() -> float:
        nonlocal commits
        pending: list[tuple[tuple[Any, ...], asyncio.Future[None]]] = []
        wake = asyncio.Event()
        done = False

        async def writer() -> None:
            nonlocal commits
            while not done or pending:
                await wake.wait()
                wake.clear()
                while pending:
                    batch = pending[:]
                    pending.clear()
                    await asyncio.to_thread(write, [row for row, _ in batch])
                    commits += 1
                    for _, future in batch:
                        future.set_result(None)

        async def append(row: tuple[Any, ...]) -> None:
            future = asyncio.get_running_loop().create_future()
            pending.append((row, future))
            wake.set()
            await future

        left = n

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                goal_id = f"goal-{left}"
                for e in range(1, EVENTS + 1):
                    await append((goal_id, e, "goal.step_completed", time.time(), _DATA))

        task = asyncio.create_task(writer())
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        elapsed = time.perf_counter() - start
        done = True
        wake.set()
        await task
        return elapsed

    elapsed = asyncio.run(main())
    conn.close()
    return {"elapsed": elapsed, "commits": commits / n}


def _schema_floor(in_flight: int, n: int, db: Path, synchronous: str) -> dict[str, Any]:
    """goalkit's own SQL for the workflow, with no engine: the ceiling of its storage design.

    The rows `SQLiteStorage` writes for a 3-step goal (insert the goal and its
    ``goal.created``; then 8 transitions, each an event row, a step upsert and a goal-row
    update, the last one ending the goal), `in_flight` goals per transaction as group commit
    batches them, in one thread: no asyncio, no fences, no Python objects.
    """
    from goalkit.storage import sqlite as gs

    store = gs.SQLiteStorage(db, synchronous=synchronous)  # type: ignore[arg-type]
    store._connect()  # schema and pragmas, as goalkit opens the file
    assert store._db is not None
    conn = store._db.conn
    data = json.dumps({"step": 1, "title": "draft", "attempt": 1, "result": "ok"})
    start = time.perf_counter()
    for first in range(0, n, in_flight):
        ids = [
            f"goal-{time.time_ns() // 1_000_000:012x}{i:016x}"
            for i in range(first, min(n, first + in_flight))
        ]
        seqs: dict[str, int] = {}
        conn.execute("BEGIN IMMEDIATE")
        for goal_id in ids:
            now = int(time.time())
            row = (
                goal_id,
                "wf-" + goal_id[5:],
                "a 3-step no-op workflow",
                "zero",
                "plan",
                10,
                2,
                "[]",
                "local",
                "active",
                "created",
                0,
                0,
                None,
                None,
                None,
                now,
                now,
                None,
                None,
                0,
                0,
            )
            seqs[goal_id] = conn.execute(gs._INSERT_GOAL, (*row, 1, None, 0.0)).lastrowid or 0
            conn.execute(gs._INSERT_EVENT, (goal_id, 1, "goal.created", time.time(), data))
        conn.execute("COMMIT")
        for event in range(2, EVENTS + 1):  # each transition, all goals of the batch at once
            now = int(time.time())
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                gs._UPSERT_STEP,
                [
                    (g, 1 + event % 3, "draft", None, "running", 1, None, None, now, None, 0, 0)
                    for g in ids
                ],
            )
            conn.executemany(
                gs._INSERT_EVENT,
                [(g, event, "goal.step_completed", time.time(), data) for g in ids],
            )
            last = event == EVENTS  # the goal's status changes with its last event only
            update = [
                (
                    "completed" if last else "active",
                    "completed" if last else "running",
                    3,
                    3 if last else 1,
                    None if last else 1,
                    None,
                    None,
                    now,
                    now if last else None,
                    event,
                    0,
                    0,
                    0,
                    last,
                    last,
                    seqs[g],
                )
                for g in ids
            ]
            if last:
                conn.executemany(gs._UPDATE_GOAL, update)
            else:
                conn.executemany(gs._UPDATE_STATE, [row[1:] for row in update])
            conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    store._disconnect()
    return {"elapsed": elapsed, "commits": (EVENTS - 1 + 1) / in_flight}


# -- LangGraph ---------------------------------------------------------------------------------


def _langgraph_graph() -> Any:
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class State(TypedDict):
        n: int

    def step(state: State) -> dict[str, int]:
        return {"n": state["n"] + 1}

    graph = StateGraph(State)
    for name in ("one", "two", "three"):
        graph.add_node(name, step)
    graph.add_edge(START, "one")
    graph.add_edge("one", "two")
    graph.add_edge("two", "three")
    graph.add_edge("three", END)
    return graph


def _langgraph_sync(n: int, db: Path) -> dict[str, Any]:
    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(db, check_same_thread=False)
    app = _langgraph_graph().compile(checkpointer=SqliteSaver(conn))
    app.invoke({"n": 0}, {"configurable": {"thread_id": "warm-up"}})
    start = time.perf_counter()
    for i in range(n):
        result = app.invoke({"n": 0}, {"configurable": {"thread_id": f"wf-{i}"}})
        assert result["n"] == STEPS
    elapsed = time.perf_counter() - start
    conn.close()
    return {"elapsed": elapsed}


def _langgraph_async(in_flight: int, n: int, db: Path) -> dict[str, Any]:
    import asyncio

    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    async def main() -> float:
        async with AsyncSqliteSaver.from_conn_string(str(db)) as saver:
            app = _langgraph_graph().compile(checkpointer=saver)
            await app.ainvoke({"n": 0}, {"configurable": {"thread_id": "warm-up"}})
            left = n

            async def worker() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    config = {"configurable": {"thread_id": f"wf-{left}"}}
                    result = await app.ainvoke({"n": 0}, config)
                    assert result["n"] == STEPS

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(in_flight)))
            return time.perf_counter() - start

    return {"elapsed": asyncio.run(main())}


# -- DBOS --------------------------------------------------------------------------------------


def _dbos(threads: int, n: int, db: Path) -> dict[str, Any]:
    import logging
    from concurrent.futures import ThreadPoolExecutor

    from dbos import DBOS

    logging.getLogger("dbos").setLevel(logging.WARNING)
    DBOS(
        config={
            "name": "goalkit-bench",
            "system_database_url": f"sqlite:///{db}",
            "log_level": "WARNING",
        }
    )

    @DBOS.step()
    def step(i: int) -> int:
        return i + 1

    @DBOS.workflow()
    def workflow() -> int:
        return step(step(step(0)))

    DBOS.launch()
    try:
        assert workflow() == STEPS
        left = n

        def worker() -> None:
            nonlocal left
            while True:
                # One thread at a time takes a number (the GIL makes this check-and-take safe
                # enough for a counter; a lost race only means one extra workflow).
                if left <= 0:
                    return
                left -= 1
                assert workflow() == STEPS

        start = time.perf_counter()
        if threads == 1:
            worker()
        else:
            with ThreadPoolExecutor(threads) as pool:
                for future in [pool.submit(worker) for _ in range(threads)]:
                    future.result()
        elapsed = time.perf_counter() - start
    finally:
        DBOS.destroy()
    return {"elapsed": elapsed}


# -- the scenarios -----------------------------------------------------------------------------

Runner = Callable[[int, Path], dict[str, Any]]

SCENARIOS: dict[str, tuple[str, str, str, Runner]] = {
    # key: (system, how, durability, runner)
    "goalkit-1": ("goalkit", "one at a time", "NORMAL", lambda n, db: _goalkit(1, n, db, "NORMAL")),
    "goalkit-50": (
        "goalkit",
        "50 in flight",
        "NORMAL",
        lambda n, db: _goalkit(50, n, db, "NORMAL"),
    ),
    "goalkit-100": (
        "goalkit",
        "100 in flight",
        "NORMAL",
        lambda n, db: _goalkit(100, n, db, "NORMAL"),
    ),
    "goalkit-1-full": (
        "goalkit",
        "one at a time",
        "FULL",
        lambda n, db: _goalkit(1, n, db, "FULL"),
    ),
    "goalkit-100-full": (
        "goalkit",
        "100 in flight",
        "FULL",
        lambda n, db: _goalkit(100, n, db, "FULL"),
    ),
    "sqlite-loop": (
        "sqlite3 loop, 9 single-row commits",
        "one at a time",
        "NORMAL",
        lambda n, db: _sqlite_loop(n, db, "NORMAL"),
    ),
    "sqlite-loop-full": (
        "sqlite3 loop, 9 single-row commits",
        "one at a time",
        "FULL",
        lambda n, db: _sqlite_loop(n, db, "FULL"),
    ),
    "lean-100": (
        "lean asyncio group-commit loop, 9 events",
        "100 in flight",
        "NORMAL",
        lambda n, db: _group_commit_loop(100, n, db, "NORMAL"),
    ),
    "lean-100-full": (
        "lean asyncio group-commit loop, 9 events",
        "100 in flight",
        "FULL",
        lambda n, db: _group_commit_loop(100, n, db, "FULL"),
    ),
    "floor-100": (
        "goalkit's SQL alone (no engine), 100 per transaction",
        "100 in flight",
        "NORMAL",
        lambda n, db: _schema_floor(100, n, db, "NORMAL"),
    ),
    "langgraph-1": (
        "LangGraph + SqliteSaver",
        "one at a time",
        "FULL (sqlite3 default), WAL",
        _langgraph_sync,
    ),
    "langgraph-async-50": (
        "LangGraph + AsyncSqliteSaver",
        "50 in flight",
        "FULL (sqlite3 default), WAL",
        lambda n, db: _langgraph_async(50, n, db),
    ),
    "dbos-1": (
        "DBOS on SQLite",
        "one at a time",
        "FULL, rollback journal",
        lambda n, db: _dbos(1, n, db),
    ),
    "dbos-50": (
        "DBOS on SQLite",
        "50 threads",
        "FULL, rollback journal",
        lambda n, db: _dbos(50, n, db),
    ),
}

REQUIRES = {
    "langgraph": ("langgraph", "langgraph.checkpoint.sqlite", "aiosqlite"),
    "dbos": ("dbos",),
}


def missing(key: str) -> str | None:
    """The first module a peer scenario needs that is not installed, or None."""
    import importlib.util

    for prefix, modules in REQUIRES.items():
        if key.startswith(prefix):
            for module in modules:
                try:
                    found = importlib.util.find_spec(module) is not None
                except ModuleNotFoundError:
                    found = False
                if not found:
                    return module
    return None


def child(key: str, n: int) -> None:
    """Run one measurement in this process and print it as JSON."""
    with tempfile.TemporaryDirectory(prefix="goalkit-compare-") as tmp:
        result = SCENARIOS[key][3](n, Path(tmp) / "bench.db")
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def measure(key: str, n: int) -> dict[str, Any]:
    answer = subprocess.run(
        [sys.executable, __file__, "--child", key, "--workflows", str(n)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(answer.stdout.strip().splitlines()[-1])


def table(n: int, repeat: int, keys: Sequence[str]) -> str:
    skipped = {key: why for key in keys if (why := missing(key)) is not None}
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in range(repeat):
        for key in keys:
            if key in skipped:
                continue
            print(f"run {r + 1}/{repeat}: {key} …", file=sys.stderr, flush=True)
            runs.setdefault(key, []).append(measure(key, n))
    rate = {key: statistics.median(n / x["elapsed"] for x in xs) for key, xs in runs.items()}
    lines = [
        f"{n} workflows of 3 no-op steps per run, median (min–max) of {repeat} runs; "
        "SQLite files in a temp dir.",
        "",
        "| system | workflows | durability | workflows/s | ms/step | writes/workflow | "
        "peak RSS MiB |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for key in keys:
        system, how, durability, _ = SCENARIOS[key]
        if key in skipped:
            lines.append(
                f"| {system} | {how} | {durability} | skipped: {skipped[key]} not installed | | | |"
            )
            continue
        xs = runs[key]
        rates = [n / x["elapsed"] for x in xs]
        ms = [x["elapsed"] * 1000 / (n * STEPS) for x in xs]
        commits = [x["commits"] for x in xs if "commits" in x]
        commits_text = f"{statistics.median(commits):.2f}" if commits else "—"
        rss = statistics.median(x["peak_rss_mib"] for x in xs)
        lines.append(
            f"| {system} | {how} | {durability} | {spread(rates, '{:,.0f}')} | "
            f"{spread(ms, '{:.3f}')} | {commits_text} | {rss:.0f} |"
        )
    lines += ["", "Targets (issue 6, point 2), ratios of medians measured in this run:", ""]
    lines += ["| ratio | target | measured | met |", "| --- | ---: | ---: | --- |"]
    dbos = [k for k in ("dbos-1", "dbos-50") if k in rate]
    targets = [
        (
            "goalkit 100 in flight / LangGraph AsyncSqliteSaver 50",
            "goalkit-100",
            ["langgraph-async-50"],
            25.0,
        ),
        ("goalkit 100 in flight / DBOS (its faster row)", "goalkit-100", dbos, 50.0),
        (
            "goalkit 100 in flight / lean group-commit loop (NORMAL)",
            "goalkit-100",
            ["lean-100"],
            0.5,
        ),
        (
            "goalkit 100 in flight FULL / lean group-commit loop FULL",
            "goalkit-100-full",
            ["lean-100-full"],
            0.5,
        ),
        (
            "goalkit one at a time FULL / LangGraph SqliteSaver (FULL)",
            "goalkit-1-full",
            ["langgraph-1"],
            2.0,
        ),
    ]
    for label, ours, theirs, goal in targets:
        if ours not in rate or not theirs or any(t not in rate for t in theirs):
            lines.append(f"| {label} | ≥ {goal:g}× | not measured | — |")
            continue
        ratio = rate[ours] / max(rate[t] for t in theirs)
        lines.append(
            f"| {label} | ≥ {goal:g}× | {ratio:.2f}× | {'yes' if ratio >= goal else 'no'} |"
        )
    if "goalkit-100" in rate and "floor-100" in rate:
        lines += [
            "",
            f"goalkit 100 in flight runs at {rate['goalkit-100'] / rate['floor-100']:.2f}× "
            "the rate of its own SQL alone (the floor row): the rest of each workflow's time "
            "is the engine's Python.",
        ]
    lines += [
        "",
        "ms/step: wall time / (workflows × 3); with many in flight it is the inverse of "
        "throughput, not a step's latency. writes/workflow: goalkit's storage writes per "
        "workflow (transitions and lease writes, counted by a storage plugin; group commit "
        "puts many of them in one SQLite transaction); for the loops, SQLite commits per "
        "workflow. "
        "Peak RSS: the child process of that run.",
        "",
        machine(),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, help="per run (default 1000; 50 with --quick)")
    parser.add_argument("--repeat", type=int, help="runs per figure (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument(
        "--only", action="append", choices=sorted(SCENARIOS), help="run only these scenarios"
    )
    parser.add_argument("--child", choices=sorted(SCENARIOS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    n = args.workflows or (50 if args.quick else 1000)
    if args.child:
        child(args.child, n)
        return
    repeat = args.repeat or (1 if args.quick else 3)
    if n < 1 or repeat < 1:
        parser.error("--workflows and --repeat must be at least 1")
    text = table(n, repeat, args.only or list(SCENARIOS))
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(f"written to {RESULTS.relative_to(HERE.parent)}", file=sys.stderr)


if __name__ == "__main__":
    main()

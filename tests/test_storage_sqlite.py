"""What only the SQLite backend promises: durability, its URL, its schema, its threads."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

from goalkit import transitions
from goalkit.errors import GoalkitError, LeaseLost, StorageError
from goalkit.models import (
    ErrorInfo,
    Event,
    Goal,
    StepSpec,
    Usage,
    encode_cursor,
    new_goal_id,
    new_workflow_id,
)
from goalkit.storage import Storage
from goalkit.storage.memory import MemoryStorage
from goalkit.storage.sqlite import MIGRATIONS, SQLiteStorage, goalkit_storage

pytestmark = pytest.mark.anyio

NOW = 1_700_000_000


def new_goal(*, owner: str = "alice", tags: tuple[str, ...] = ()) -> Goal:
    return Goal(
        id=new_goal_id(),
        workflow_id=new_workflow_id(),
        description="Write unit tests",
        model="scripted",
        mode="plan",
        max_steps=10,
        max_retries=2,
        tags=tags,
        owner=owner,
        status="active",
        phase="created",
        created_at=NOW,
        updated_at=NOW,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "goals.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteStorage]:
    storage = SQLiteStorage(db_path)
    await storage.open()
    try:
        yield storage
    finally:
        await storage.close()


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Record (thread id, SQL) of every statement run by connections opened from now on."""
    seen: list[tuple[int, str]] = []
    connect = sqlite3.connect

    def tracing_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = connect(*args, **kwargs)
        conn.set_trace_callback(lambda sql: seen.append((threading.get_ident(), sql)))
        return conn

    monkeypatch.setattr(sqlite3, "connect", tracing_connect)
    return seen


@pytest.fixture
def raw(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection to the store's file, for looking behind the backend's back."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


async def start(store: Storage, lease: str = "m1", **fields: Any) -> Goal:
    """Create a goal, lease it to `lease` and plan two steps; return it as stored."""
    goal = new_goal(**fields)
    await store.create_goal(transitions.create(goal))
    (goal,) = await store.claim_goals(lease, ttl=60, limit=1, exclude=())
    plan = (StepSpec("one"), StepSpec("two", "the second"))
    await store.commit(transitions.decomposed(goal, plan, NOW + 1, lease=lease))
    got = await store.get_goal(goal.id)
    assert got is not None
    return got


def migration_names() -> list[str]:
    """Every migration's name, oldest first (all are pending on an empty database)."""
    return [m.name for m in MIGRATIONS.pending(Database(memory=True, execute_plugins=False))]


def schema(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    return conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
    ).fetchall()


class TestDurability:
    async def test_data_survives_reopen(self, db_path: Path) -> None:
        """Goals, steps, events and leases are all there after closing and reopening the file."""
        store = SQLiteStorage(db_path)
        await store.open()
        goal = await start(store, tags=("qa",))
        events = await store.read_events(goal.id)
        await store.close()

        again = SQLiteStorage(db_path)
        await again.open()
        try:
            assert await again.get_goal(goal.id) == goal
            assert await again.read_events(goal.id) == events
            assert (await again.list_goals(tag="qa")).items == (attrs.evolve(goal, steps=()),)
            assert await again.renew_leases("m1", [goal.id], ttl=60) == {goal.id}
        finally:
            await again.close()

    async def test_reopen_same_object(self, db_path: Path) -> None:
        """A closed store can be opened again and sees its data."""
        store = SQLiteStorage(db_path)
        await store.open()
        goal = await start(store)
        await store.close()
        await store.close()  # closing twice is harmless
        await store.open()
        try:
            assert await store.get_goal(goal.id) == goal
        finally:
            await store.close()


class TestConnection:
    async def test_wal_is_on(self, store: SQLiteStorage, raw: sqlite3.Connection) -> None:
        """The file is in WAL mode, so readers never block the writer."""
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)

    @pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])
    async def test_pragmas_applied(
        self, db_path: Path, traced: list[tuple[int, str]], synchronous: str
    ) -> None:
        """busy_timeout, synchronous (as chosen in the URL) and foreign keys are set on open."""
        store = goalkit_storage(f"sqlite:///{db_path}?synchronous={synchronous.lower()}")
        assert isinstance(store, SQLiteStorage)
        await store.open()
        await store.close()
        statements = {sql for _, sql in traced}
        assert f"PRAGMA synchronous = {synchronous}" in statements
        assert "PRAGMA busy_timeout = 5000" in statements
        assert "PRAGMA foreign_keys = ON" in statements

    async def test_no_sql_on_event_loop_thread(
        self, db_path: Path, traced: list[tuple[int, str]]
    ) -> None:
        """Every SQL statement, from open to close, runs off the event loop's thread."""
        loop_thread = threading.get_ident()
        store = SQLiteStorage(db_path)
        await store.open()
        goal = await start(store)
        await store.list_goals(owner="alice")
        await store.read_events(goal.id)
        await store.release_leases("m1", [goal.id])
        await store.close()
        threads = {thread for thread, _ in traced}
        assert len(traced) > 20
        assert loop_thread not in threads

    async def test_writes_begin_immediate(
        self, traced: list[tuple[int, str]], db_path: Path
    ) -> None:
        """Commits take the write lock up front with BEGIN IMMEDIATE."""
        store = SQLiteStorage(db_path)
        await store.open()
        try:
            traced.clear()
            await start(store)
        finally:
            await store.close()
        begins = [sql for _, sql in traced if sql.startswith("BEGIN")]
        assert "BEGIN IMMEDIATE" in begins
        assert "BEGIN" not in begins


class TestMigrations:
    async def test_version_recorded(self, store: SQLiteStorage, raw: sqlite3.Connection) -> None:
        """Each applied migration is recorded once under the goalkit migration set."""
        rows = raw.execute(
            "SELECT migration_set, name FROM _sqlite_migrations ORDER BY id"
        ).fetchall()
        assert rows == [("goalkit", name) for name in migration_names()]
        assert rows[0] == ("goalkit", "0001_initial")

    async def test_migrating_again_is_a_no_op(self, db_path: Path, raw: sqlite3.Connection) -> None:
        """Opening an up-to-date file changes neither its schema nor its migration record."""
        for _ in range(2):
            store = SQLiteStorage(db_path)
            await store.open()
            await store.close()
        first = (schema(raw), raw.execute("SELECT * FROM _sqlite_migrations").fetchall())
        store = SQLiteStorage(db_path)
        await store.open()
        await store.close()
        assert (schema(raw), raw.execute("SELECT * FROM _sqlite_migrations").fetchall()) == first

    async def test_fresh_schema_equals_migrated_schema(self, tmp_path: Path) -> None:
        """A file migrated step by step ends with the same schema as a fresh one."""
        stepwise, fresh = tmp_path / "stepwise.db", tmp_path / "fresh.db"
        names = migration_names()
        for stop in [*names[1:], None]:
            # Open at each intermediate version the way an older release would have left it.
            conn = sqlite3.connect(stepwise, isolation_level=None)
            MIGRATIONS.apply(Database(conn, execute_plugins=False), stop_before=stop)
            conn.close()
        store = SQLiteStorage(stepwise)
        await store.open()
        await store.close()
        store = SQLiteStorage(fresh)
        await store.open()
        await store.close()
        with sqlite3.connect(stepwise) as a, sqlite3.connect(fresh) as b:
            assert schema(a) == schema(b)
            assert len(schema(a)) >= 8  # goals, goal_tags, steps, events, their indexes

    async def test_goals_from_before_usage_read_as_unbudgeted_and_unused(
        self, db_path: Path
    ) -> None:
        """0003_usage keeps older rows: no budget, zero tokens, and they go on adding up."""
        conn = sqlite3.connect(db_path, isolation_level=None)
        MIGRATIONS.apply(Database(conn, execute_plugins=False), stop_before="0003_usage")
        conn.close()
        # A goal and step as the previous release wrote them, before the new columns.
        conn = sqlite3.connect(db_path, isolation_level=None)
        goal = new_goal()
        conn.execute(
            "INSERT INTO goals (id, workflow_id, description, model, mode, max_steps, "
            "max_retries, tags, owner, status, phase, total_steps, steps_completed, "
            "created_at, updated_at) VALUES (?, ?, 'x', 'scripted', 'plan', 3, 2, '[]', "
            "'alice', 'active', 'running', 1, 0, 0, 0)",
            (goal.id, goal.workflow_id),
        )
        conn.execute(
            "INSERT INTO steps (goal_id, idx, title, status, attempts) "
            "VALUES (?, 1, 'a', 'pending', 0)",
            (goal.id,),
        )
        conn.close()
        old = SQLiteStorage(db_path)
        await old.open()
        try:
            stored = await old.get_goal(goal.id)
            assert stored is not None
            assert (stored.max_tokens, stored.usage, stored.steps[0].usage) == (
                None,
                Usage(),
                Usage(),
            )
        finally:
            await old.close()

    async def test_concurrent_first_open_migrates_once(self, db_path: Path) -> None:
        """Several stores opening one fresh file at the same time all succeed, migrating once."""
        stores = [SQLiteStorage(db_path) for _ in range(4)]
        async with anyio.create_task_group() as tg:
            for s in stores:
                tg.start_soon(s.open)
        for s in stores:
            await s.close()
        with sqlite3.connect(db_path) as conn:
            assert conn.execute("SELECT count(*) FROM _sqlite_migrations").fetchone() == (
                len(migration_names()),
            )

    async def test_a_locked_switch_to_wal_is_retried(
        self, db_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """ "database is locked" from the switch to WAL is retried, not raised."""
        calls = []
        enable_wal = Database.enable_wal

        def flaky(db: Database) -> None:
            calls.append(1)
            if len(calls) <= 2:
                raise sqlite3.OperationalError("database is locked")
            enable_wal(db)

        monkeypatch.setattr(Database, "enable_wal", flaky)
        store = SQLiteStorage(db_path)
        await store.open()
        await store.close()
        assert len(calls) == 3
        with sqlite3.connect(db_path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


class TestQueryPlans:
    @pytest.mark.parametrize(
        "call",
        [
            pytest.param(lambda s, g: s.get_goal(g.id), id="get"),
            pytest.param(lambda s, g: s.list_goals(owner="alice"), id="owner"),
            pytest.param(lambda s, g: s.list_goals(status="active"), id="status"),
            pytest.param(lambda s, g: s.list_goals(tag="qa"), id="tag"),
            pytest.param(lambda s, g: s.list_goals(owner="alice", status="active"), id="both"),
            pytest.param(lambda s, g: s.list_goals(tag="qa", owner="bob"), id="tag+owner"),
            pytest.param(lambda s, g: s.list_goals(cursor=encode_cursor(4)), id="cursor"),
            pytest.param(
                lambda s, g: s.list_goals(owner="alice", cursor=encode_cursor(4)),
                id="owner+cursor",
            ),
            pytest.param(
                lambda s, g: s.list_goals(status="active", cursor=encode_cursor(4)),
                id="status+cursor",
            ),
            pytest.param(
                lambda s, g: s.list_goals(tag="qa", cursor=encode_cursor(4)), id="tag+cursor"
            ),
            pytest.param(lambda s, g: s.goals_by_workflow(g.workflow_id), id="workflow"),
            pytest.param(lambda s, g: s.claim_goals("m2", ttl=1, limit=5), id="claim"),
            pytest.param(lambda s, g: s.renew_leases("m1", [g.id], ttl=1), id="renew"),
            pytest.param(lambda s, g: s.read_events(g.id, after=1), id="events"),
            pytest.param(
                lambda s, g: s.commit(transitions.step_started(g, g.steps[0], NOW, lease="m1")),
                id="commit",
            ),
        ],
    )
    async def test_served_by_an_index(
        self,
        db_path: Path,
        traced: list[tuple[int, str]],
        raw: sqlite3.Connection,
        call: Callable[[SQLiteStorage, Goal], Any],
    ) -> None:
        """Each lookup the engine and API make searches an index: no table scan, no sort."""
        store = SQLiteStorage(db_path)
        await store.open()
        try:
            for owner in ("alice", "bob"):
                for tags in [("qa",), ()]:
                    await start(store, lease=f"m-{owner}-{len(tags)}", owner=owner, tags=tags)
            goal = await start(store, tags=("qa",))
            traced.clear()
            await call(store, goal)
        finally:
            await store.close()
        queries = [
            sql for _, sql in traced if sql.split()[0].upper() in ("SELECT", "UPDATE", "INSERT")
        ]
        assert queries
        for sql in queries:
            plan = [row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {sql}")]
            for step in plan:
                assert not (step.startswith("SCAN") and "json_each" not in step), (sql, plan)
                assert "TEMP B-TREE" not in step, (sql, plan)


def stored_counts(conn: sqlite3.Connection) -> dict[tuple[Any, ...], int]:
    """The non-zero rows of ``goal_counts``, keyed (owner, status, tag) with None for "any"."""
    rows = conn.execute("SELECT key, n FROM goal_counts WHERE n != 0").fetchall()
    return {tuple(json.loads(key)): n for key, n in rows}


def true_counts(conn: sqlite3.Connection) -> dict[tuple[Any, ...], int]:
    """What ``goal_counts`` must hold, counted from the goal rows and goal_tags."""
    counts: Counter[tuple[Any, ...]] = Counter()
    tags: dict[int, list[str]] = {}
    for tag, seq in conn.execute("SELECT tag, seq FROM goal_tags"):
        tags.setdefault(seq, []).append(tag)
    for seq, owner, status in conn.execute("SELECT seq, owner, status FROM goals"):
        for o in (None, owner):
            for s in (None, status):
                for t in [None, *tags.get(seq, [])]:
                    counts[(o, s, t)] += 1
    return dict(counts)


def assert_counts_exact(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert stored_counts(conn) == true_counts(conn)


class TestCounts:
    """Listing totals come from ``goal_counts``, which triggers keep exact."""

    async def test_total_is_one_lookup(
        self, db_path: Path, traced: list[tuple[int, str]], raw: sqlite3.Connection
    ) -> None:
        """A listing reads its total from one row, whatever the filters: no count(*)."""
        store = SQLiteStorage(db_path)
        await store.open()
        try:
            for owner, tags in [("alice", ("qa",)), ("alice", ("qa", "x")), ("bob", ())]:
                await store.create_goal(transitions.create(new_goal(owner=owner, tags=tags)))
            traced.clear()
            totals = [
                (await store.list_goals(**filters)).total
                for filters in [
                    {},
                    {"owner": "alice"},
                    {"tag": "qa"},
                    {"status": "active", "tag": "x", "owner": "alice"},
                    {"owner": "carol"},
                ]
            ]
        finally:
            await store.close()
        assert totals == [3, 2, 2, 1, 0]
        statements = [sql for _, sql in traced]
        assert not any("count(" in sql.lower() for sql in statements)
        counts = [sql for sql in statements if "goal_counts" in sql]
        assert len(counts) == 5
        for sql in counts:
            plan = [row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {sql}")]
            assert plan == ["SEARCH goal_counts USING PRIMARY KEY (key=?)"], plan

    async def test_exact_through_every_ending(self, store: SQLiteStorage, db_path: Path) -> None:
        """Create, complete, fail, cancel: after each, the counts equal count(*)."""
        goals = [
            await start(store, lease="m1", owner=owner, tags=tags)
            for owner, tags in [("alice", ("qa",)), ("bob", ("qa", "docs")), ("alice", ())]
        ]
        assert_counts_exact(db_path)
        await store.commit(transitions.complete(goals[0], "done", NOW, lease="m1"))
        await store.commit(transitions.fail(goals[1], ErrorInfo("x", "y"), NOW, lease="m1"))
        assert_counts_exact(db_path)
        await store.commit(transitions.cancel(goals[2], NOW))
        assert_counts_exact(db_path)
        assert (await store.list_goals(status="failed", tag="docs")).total == 1

    async def test_refused_write_changes_no_count(
        self, store: SQLiteStorage, db_path: Path
    ) -> None:
        """A write its fence refuses (rolled back to its savepoint) leaves the counts as they
        were, beside writes of the same batch that commit."""
        goal = await start(store)
        other = await start(store, lease="m2")

        async def refused() -> None:
            with pytest.raises(LeaseLost):
                await store.commit(transitions.complete(goal, "x", NOW, lease="someone-else"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(refused)
            tg.start_soon(store.commit, transitions.complete(other, "x", NOW, lease="m2"))
        assert_counts_exact(db_path)
        assert (await store.list_goals(status="completed")).total == 1

    async def test_exact_under_concurrent_writers(self, db_path: Path) -> None:
        """Two stores on one file (two processes) creating and ending goals at once."""
        stores = [SQLiteStorage(db_path), SQLiteStorage(db_path)]
        for s in stores:
            await s.open()

        async def work(store: SQLiteStorage, name: str) -> None:
            for i in range(20):
                goal = new_goal(owner=("alice", "bob")[i % 2], tags=("qa",) if i % 2 else ())
                await store.create_goal(transitions.create(goal))
                (held,) = await store.claim_goals(name, ttl=60, limit=1)
                ending = i % 3
                if ending == 0:
                    await store.commit(transitions.complete(held, "ok", NOW, lease=name))
                elif ending == 1:
                    await store.commit(transitions.cancel(held, NOW))

        try:
            async with anyio.create_task_group() as tg:
                for i, s in enumerate(stores):
                    for j in range(3):
                        tg.start_soon(work, s, f"m{i}-{j}")
            page = await stores[0].list_goals(limit=1)
        finally:
            for s in stores:
                await s.close()
        assert page.total == 120
        assert_counts_exact(db_path)

    async def test_goals_stored_before_0005_are_counted(self, db_path: Path) -> None:
        """A file the previous release filled (schema at 0004) opens with exact counts."""
        conn = sqlite3.connect(db_path, isolation_level=None)
        MIGRATIONS.apply(Database(conn, execute_plugins=False), stop_before="0005_goal_counts")
        # Goals as the previous release wrote them: the goal row and its goal_tags rows.
        statuses = ("active", "completed", "failed", "cancelled")
        for i in range(30):
            goal = new_goal(owner=f"user{i % 3}", tags=[(), ("qa",), ("qa", "x")][i % 3])
            seq = conn.execute(
                "INSERT INTO goals (id, workflow_id, description, model, mode, max_steps, "
                "max_retries, tags, owner, status, phase, total_steps, steps_completed, "
                "created_at, updated_at) VALUES (?, ?, 'x', 'scripted', 'plan', 3, 2, ?, ?, ?, "
                "'created', 0, 0, 0, 0)",
                (goal.id, goal.workflow_id, json.dumps(goal.tags), goal.owner, statuses[i % 4]),
            ).lastrowid
            conn.executemany(
                "INSERT INTO goal_tags (tag, seq) VALUES (?, ?)", [(t, seq) for t in goal.tags]
            )
        assert conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'goal_counts'"
        ).fetchone() == (0,)
        conn.close()
        store = SQLiteStorage(db_path)
        await store.open()
        try:
            assert_counts_exact(db_path)
            assert (await store.list_goals()).total == 30
            assert (await store.list_goals(owner="user2", tag="x")).total == 10
            assert (await store.list_goals(status="completed", tag="qa")).total == 6
            # And they go on being kept.
            await store.create_goal(transitions.create(new_goal(owner="user1", tags=("x",))))
            (held,) = await store.claim_goals("m1", ttl=60, limit=1)
            await store.commit(transitions.complete(held, "done", NOW, lease="m1"))
            assert (await store.list_goals(tag="x")).total == 11
            assert_counts_exact(db_path)
        finally:
            await store.close()

    def test_hand_edits_keep_counts_exact(self, db_path: Path) -> None:
        """Changes goalkit never makes (an owner, tags, a deleted goal) keep them exact too."""

        async def fill() -> None:
            store = SQLiteStorage(db_path)
            await store.open()
            try:
                for owner, tags in [("alice", ("qa",)), ("bob", ("qa", "x")), ("carol", ())]:
                    await store.create_goal(transitions.create(new_goal(owner=owner, tags=tags)))
            finally:
                await store.close()

        anyio.run(fill)
        with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
            conn.execute("UPDATE goals SET owner = 'dave', status = 'failed' WHERE owner = 'bob'")
            assert stored_counts(conn) == true_counts(conn)
            # Tags live twice: in the goal row (which the counts follow) and in goal_tags.
            (seq,) = conn.execute("SELECT seq FROM goals WHERE owner = 'alice'").fetchone()
            conn.execute("UPDATE goals SET tags = ? WHERE seq = ?", ('["x","y"]', seq))
            conn.execute("DELETE FROM goal_tags WHERE seq = ?", (seq,))
            conn.executemany(
                "INSERT INTO goal_tags (tag, seq) VALUES (?, ?)", [("x", seq), ("y", seq)]
            )
            assert stored_counts(conn) == true_counts(conn)
            conn.execute(
                "DELETE FROM goal_tags WHERE seq = (SELECT seq FROM goals WHERE owner = 'dave')"
            )
            conn.execute("DELETE FROM events")
            conn.execute("DELETE FROM goals WHERE owner = 'dave'")
            assert stored_counts(conn) == true_counts(conn)


_OWNERS = ("alice", "bob", "ça va")
_TAGS = ("qa", "docs", "é", "x y")
_OPERATIONS = st.lists(
    st.one_of(
        st.tuples(
            st.just("create"),
            st.sampled_from(_OWNERS),
            st.lists(st.sampled_from(_TAGS), max_size=3, unique=True),
        ),
        st.tuples(
            st.sampled_from(["complete", "fail", "cancel"]),
            st.integers(min_value=0),
            st.none(),
        ),
    ),
    max_size=25,
)


class TestCountsProperty:
    """After any sequence of creations and endings, every count equals count(*)."""

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(operations=_OPERATIONS)
    def test_counts_equal_count_star(self, tmp_path_factory: Any, operations: Any) -> None:
        path = tmp_path_factory.mktemp("counts") / "goals.db"

        async def run() -> None:
            store = SQLiteStorage(path)
            await store.open()
            goals: list[Goal] = []
            try:
                for op, arg, tags in operations:
                    if op == "create":
                        goal = new_goal(owner=arg, tags=tuple(tags))
                        await store.create_goal(transitions.create(goal))
                        goals.append(goal)
                        continue
                    if not goals:
                        continue
                    stored = await store.get_goal(goals[arg % len(goals)].id)
                    assert stored is not None
                    if stored.done:
                        continue
                    if op == "cancel":
                        await store.commit(transitions.cancel(stored, NOW))
                        continue
                    await store.claim_goals("p", ttl=600, limit=len(goals))
                    if op == "complete":
                        await store.commit(transitions.complete(stored, "ok", NOW, lease="p"))
                    else:
                        error = ErrorInfo("x", "y")
                        await store.commit(transitions.fail(stored, error, NOW, lease="p"))
                with contextlib.closing(sqlite3.connect(path)) as conn:
                    assert stored_counts(conn) == true_counts(conn)
                    for key in true_counts(conn):
                        owner, status, tag = key
                        where = " AND ".join(
                            f"{column} = ?"
                            for column, value in [("g.owner", owner), ("g.status", status)]
                            if value is not None
                        )
                        source = "goals g"
                        params = [v for v in (owner, status) if v is not None]
                        if tag is not None:
                            source = "goal_tags t JOIN goals g ON g.seq = t.seq"
                            where = " AND ".join(filter(None, [where, "t.tag = ?"]))
                            params.append(tag)
                        sql = f"SELECT count(*) FROM {source}" + (
                            f" WHERE {where}" if where else ""
                        )
                        (expected,) = conn.execute(sql, params).fetchone()
                        page = await store.list_goals(owner=owner, status=status, tag=tag, limit=1)
                        assert page.total == expected, key
            finally:
                await store.close()

        anyio.run(run)


class TestUrl:
    @pytest.mark.parametrize(
        ("url", "path", "synchronous"),
        [
            ("sqlite:///goals.db", "goals.db", "NORMAL"),
            ("sqlite:///data/goals.db", "data/goals.db", "NORMAL"),
            ("sqlite:////var/lib/goals.db", "/var/lib/goals.db", "NORMAL"),
            ("sqlite:///goals.db?synchronous=FULL", "goals.db", "FULL"),
            ("sqlite:///goals.db?synchronous=normal", "goals.db", "NORMAL"),
        ],
    )
    def test_serves_sqlite_urls(self, url: str, path: str, synchronous: str) -> None:
        """Everything after ``sqlite:///`` is the path; the query may choose `synchronous`."""
        store = goalkit_storage(url)
        assert isinstance(store, SQLiteStorage)
        assert (store.path, store.synchronous) == (path, synchronous)

    @pytest.mark.parametrize("url", ["memory://", "postgresql://db/goals", "sqlitex:///a.db"])
    def test_other_schemes_are_not_ours(self, url: str) -> None:
        """URLs of other schemes get None, so the next plugin may answer."""
        assert goalkit_storage(url) is None

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("sqlite://", "no file path"),
            ("sqlite:///", "no file path"),
            ("sqlite://goals.db", "no file path"),
            ("sqlite:///goals.db?synchronous=OFF", "NORMAL or FULL"),
            ("sqlite:///goals.db?journal=delete", "unknown option"),
        ],
    )
    def test_bad_url_is_storage_error(self, url: str, message: str) -> None:
        """A sqlite URL without a path or with a bad option is a StorageError saying why."""
        with pytest.raises(StorageError, match=message):
            goalkit_storage(url)


class TestErrors:
    async def test_missing_directory(self, tmp_path: Path) -> None:
        """A file in a directory that does not exist fails to open with a StorageError."""
        store = SQLiteStorage(tmp_path / "nope" / "goals.db")
        with pytest.raises(StorageError, match="unable to open"):
            await store.open()

    async def test_not_a_database(self, tmp_path: Path) -> None:
        """A file that is not SQLite fails to open with a StorageError, not a sqlite3 error."""
        path = tmp_path / "goals.db"
        path.write_bytes(b"this is not a database at all" * 100)
        with pytest.raises(StorageError, match="not a database"):
            await SQLiteStorage(path).open()

    async def test_use_before_open(self, db_path: Path) -> None:
        """Calling a closed store is a StorageError."""
        with pytest.raises(StorageError, match="not open"):
            await SQLiteStorage(db_path).get_goal("goal-x")

    async def test_locked_database(self, db_path: Path, raw: sqlite3.Connection) -> None:
        """A write blocked past busy_timeout by another connection is a StorageError."""
        store = SQLiteStorage(db_path, busy_timeout=0.05)
        await store.open()
        try:
            goal = new_goal()
            raw.execute("BEGIN IMMEDIATE")
            try:
                with pytest.raises(StorageError, match="locked") as info:
                    await store.create_goal(transitions.create(goal))
                assert not isinstance(info.value.__cause__, GoalkitError)
                assert isinstance(info.value.__cause__, sqlite3.OperationalError)
            finally:
                raw.execute("ROLLBACK")
            # The failed write left nothing behind and the store still works.
            assert await store.get_goal(goal.id) is None
            await store.create_goal(transitions.create(goal))
        finally:
            await store.close()

    async def test_unserialisable_value(self, store: SQLiteStorage) -> None:
        """A result that is not JSON is refused with a StorageError and nothing is written."""
        goal = await start(store)
        with pytest.raises(StorageError, match="JSON"):
            await store.commit(transitions.complete(goal, object(), NOW, lease="m1"))
        assert await store.get_goal(goal.id) == goal


class TestConcurrency:
    async def test_concurrent_commits_number_gaplessly(self, store: SQLiteStorage) -> None:
        """Many tasks committing to one goal at once get events 1..n with no gap or repeat."""
        goal = await start(store)
        returned: list[Event] = []

        async def commit() -> None:
            (event,) = await store.commit(
                transitions.step_started(goal, goal.steps[0], NOW, lease="m1")
            )
            returned.append(event)

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(commit)
        assert sorted(e.id for e in returned) == list(range(3, 53))
        assert [e.id for e in await store.read_events(goal.id)] == list(range(1, 53))

    async def test_two_stores_on_one_file(self, store: SQLiteStorage, db_path: Path) -> None:
        """Two stores on one file (two processes) interleave commits without losing numbers."""
        goal = await start(store)
        other = SQLiteStorage(db_path)
        await other.open()
        try:

            async def commit(target: SQLiteStorage) -> None:
                for _ in range(20):
                    await target.commit(
                        transitions.step_started(goal, goal.steps[0], NOW, lease="m1")
                    )

            async with anyio.create_task_group() as tg:
                tg.start_soon(commit, store)
                tg.start_soon(commit, other)
        finally:
            await other.close()
        assert [e.id for e in await store.read_events(goal.id)] == list(range(1, 43))

    async def test_only_one_store_claims_a_goal(self, store: SQLiteStorage, db_path: Path) -> None:
        """Stores racing to claim on one file never lease the same goal twice."""
        for _ in range(30):
            await store.create_goal(transitions.create(new_goal()))
        others = [SQLiteStorage(db_path) for _ in range(3)]
        for s in others:
            await s.open()
        claims: dict[str, list[str]] = {}

        async def claim(name: str, target: SQLiteStorage) -> None:
            claims[name] = []
            for _ in range(10):
                claims[name] += [g.id for g in await target.claim_goals(name, ttl=60, limit=2)]

        try:
            async with anyio.create_task_group() as tg:
                for i, s in enumerate([store, *others]):
                    tg.start_soon(claim, f"m{i}", s)
        finally:
            for s in others:
                await s.close()
        every = [goal_id for ids in claims.values() for goal_id in ids]
        assert len(every) == len(set(every)) == 30

    async def test_cancelled_commit_is_all_or_nothing(self, store: SQLiteStorage) -> None:
        """Cancelling callers mid-commit leaves each transition fully applied or not at all."""
        goal = await start(store)
        with anyio.move_on_after(0.02):
            async with anyio.create_task_group() as tg:
                for _ in range(200):
                    tg.start_soon(
                        store.commit,
                        transitions.step_started(goal, goal.steps[0], NOW, lease="m1"),
                    )
        after = await store.get_goal(goal.id)
        assert after is not None
        events = await store.read_events(goal.id, limit=10_000)
        assert [e.id for e in events] == list(range(1, after.last_event_id + 1))
        # Each stored step_started event went with its step write; a later commit still works.
        await store.commit(transitions.step_started(after, after.steps[0], NOW, lease="m1"))

    async def test_close_in_cancelled_scope_still_closes(self, db_path: Path) -> None:
        """Closing from a cancelled scope still closes the connection."""
        store = SQLiteStorage(db_path)
        await store.open()
        with anyio.CancelScope() as scope:
            scope.cancel()
            await store.close()
        with pytest.raises(StorageError, match="not open"):
            await store.get_goal("goal-x")


class TestGroupCommit:
    """Concurrent writes share transactions, and each keeps its own fences and errors."""

    async def test_concurrent_commits_share_transactions(
        self, db_path: Path, traced: list[tuple[int, str]]
    ) -> None:
        """Fifty goals committing at once take far fewer than fifty transactions."""
        store = SQLiteStorage(db_path)
        await store.open()
        try:
            goals = [await start(store, lease="m1") for _ in range(50)]
            traced.clear()
            async with anyio.create_task_group() as tg:
                for goal in goals:
                    tg.start_soon(
                        store.commit,
                        transitions.step_started(goal, goal.steps[0], NOW, lease="m1"),
                    )
            for goal in goals:
                assert [e.id for e in await store.read_events(goal.id)] == [1, 2, 3]
        finally:
            await store.close()
        begins = [sql for _, sql in traced if sql == "BEGIN IMMEDIATE"]
        assert 1 <= len(begins) < 25

    async def test_refused_write_does_not_fail_its_batch(self, store: SQLiteStorage) -> None:
        """Fenced-off and unserialisable writes raise alone; the others in the batch commit."""
        goals = [await start(store, lease="m1") for _ in range(30)]
        outcome: dict[str, str] = {}

        async def write(i: int, goal: Goal) -> None:
            step = goal.steps[0]
            if i % 3 == 1:
                transition = transitions.step_started(goal, step, NOW, lease="someone-else")
            elif i % 3 == 2:
                transition = transitions.step_completed(goal, step, object(), NOW, lease="m1")
            else:
                transition = transitions.step_started(goal, step, NOW, lease="m1")
            try:
                await store.commit(transition)
            except GoalkitError as exc:
                outcome[goal.id] = type(exc).__name__
            else:
                outcome[goal.id] = "ok"

        async with anyio.create_task_group() as tg:
            for i, goal in enumerate(goals):
                tg.start_soon(write, i, goal)
        for i, goal in enumerate(goals):
            expected = ["ok", "LeaseLost", "StorageError"][i % 3]
            assert outcome[goal.id] == expected
            stored = await store.get_goal(goal.id)
            events = [e.id for e in await store.read_events(goal.id)]
            if expected == "ok":
                assert events == [1, 2, 3]
                assert stored is not None and stored.steps[0].status == "running"
            else:
                assert events == [1, 2]
                assert stored == goal

    async def test_a_cancel_and_a_step_in_one_batch(self, store: SQLiteStorage) -> None:
        """Two writes to one goal in one batch: exactly one wins, numbering stays gapless."""
        goals = [await start(store, lease="m1") for _ in range(20)]
        outcome: dict[str, list[str]] = {g.id: [] for g in goals}

        async def write(transition: transitions.Transition) -> None:
            try:
                await store.commit(transition)
            except GoalkitError as exc:
                outcome[transition.goal.id].append(type(exc).__name__)
            else:
                outcome[transition.goal.id].append(transition.event or "")

        async with anyio.create_task_group() as tg:
            for goal in goals:
                tg.start_soon(write, transitions.step_started(goal, goal.steps[0], NOW, lease="m1"))
                tg.start_soon(write, transitions.cancel(goal, NOW))
        for goal in goals:
            stored = await store.get_goal(goal.id)
            events = await store.read_events(goal.id)
            assert stored is not None and [e.id for e in events] == [1, 2, 3]
            assert stored.last_event_id == 3
            if events[-1].type == "goal.cancelled":
                assert sorted(outcome[goal.id]) == ["LeaseLost", "goal.cancelled"]
                assert stored.status == "cancelled"
                assert {s.status for s in stored.steps} == {"cancelled"}
            else:
                assert sorted(outcome[goal.id]) == ["GoalConflict", "goal.step_started"]
                assert stored.status == "active" and stored.steps[0].status == "running"

    async def test_a_row_sqlite_refuses_fails_alone(self, store: SQLiteStorage) -> None:
        """When SQLite refuses a batch's commits as a group, they are retried one by one."""
        goals = [await start(store, lease="m1") for _ in range(10)]
        bad = goals[4]
        outcome: dict[str, str] = {}

        async def write(goal: Goal) -> None:
            step = goal.steps[0]
            if goal is bad:  # a NOT NULL column: only SQLite notices
                step = attrs.evolve(step, title=None)
            try:
                await store.commit(transitions.step_started(goal, step, NOW, lease="m1"))
            except GoalkitError as exc:
                outcome[goal.id] = str(exc)
            else:
                outcome[goal.id] = "ok"

        with anyio.fail_after(10):  # a writer thread killed by the error would hang here
            async with anyio.create_task_group() as tg:
                for goal in goals:
                    tg.start_soon(write, goal)
        assert "NOT NULL" in outcome.pop(bad.id)
        assert set(outcome.values()) == {"ok"}
        assert await store.get_goal(bad.id) == bad
        for goal in goals:
            expected = [1, 2] if goal is bad else [1, 2, 3]
            assert [e.id for e in await store.read_events(goal.id)] == expected

    async def test_reads_do_not_wait_for_a_blocked_writer(
        self, db_path: Path, raw: sqlite3.Connection
    ) -> None:
        """While another connection holds the write lock, reads still answer at once."""
        store = SQLiteStorage(db_path, busy_timeout=30)
        await store.open()
        try:
            goal = await start(store)
            committed = anyio.Event()

            async def commit() -> None:
                await store.commit(transitions.step_started(goal, goal.steps[0], NOW, lease="m1"))
                committed.set()

            raw.execute("BEGIN IMMEDIATE")
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(commit)
                    await anyio.wait_all_tasks_blocked()
                    assert await store.get_goal(goal.id) == goal
                    assert len(await store.read_events(goal.id)) == 2
                    assert (await store.list_goals()).total == 1
                    assert not committed.is_set()  # the write is still waiting for the lock
                    raw.execute("ROLLBACK")
            finally:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
            assert committed.is_set()
            assert len(await store.read_events(goal.id)) == 3
        finally:
            await store.close()

    async def test_lease_renewal_jumps_the_queue(
        self, db_path: Path, raw: sqlite3.Connection, traced: list[tuple[int, str]]
    ) -> None:
        """A renewal queued behind a backlog of transitions is written before all of them."""
        store = SQLiteStorage(db_path, busy_timeout=30)
        await store.open()
        try:
            goals = [await start(store, lease="m1") for _ in range(20)]
            traced.clear()
            raw.execute("BEGIN IMMEDIATE")  # the writer stalls: a backlog builds up
            try:
                async with anyio.create_task_group() as tg:

                    def commit(goal: Goal) -> None:
                        tg.start_soon(
                            store.commit,
                            transitions.step_started(goal, goal.steps[0], NOW, lease="m1"),
                        )

                    commit(goals[0])
                    # Until the writer waits for the lock (seen from its own thread, by the
                    # trace callback: nothing on this loop could be an Event to wait on).
                    with anyio.fail_after(10):
                        while "BEGIN IMMEDIATE" not in (sql for _, sql in traced):  # noqa: ASYNC110
                            await anyio.sleep(0.01)
                    for goal in goals[1:]:
                        commit(goal)
                    await anyio.wait_all_tasks_blocked()
                    tg.start_soon(
                        partial(store.renew_leases, "m1", [g.id for g in goals[:3]], ttl=60.0)
                    )
                    await anyio.wait_all_tasks_blocked()
                    raw.execute("ROLLBACK")
            finally:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
        finally:
            await store.close()
        statements = [sql for _, sql in traced]
        renewal = next(
            i
            for i, sql in enumerate(statements)
            if sql.startswith("UPDATE goals SET lease_expires")
        )
        inserts = [i for i, sql in enumerate(statements) if sql.startswith("INSERT INTO events")]
        assert len(inserts) == 20
        # Only the write the writer had already taken when the backlog built up comes first.
        assert sum(i < renewal for i in inserts) == 1

    async def test_write_after_close_is_refused(self, db_path: Path) -> None:
        """A write to a closed store is a StorageError, not a hang."""
        store = SQLiteStorage(db_path)
        await store.open()
        await store.close()
        with pytest.raises(StorageError, match="not open"):
            await store.create_goal(transitions.create(new_goal()))


class TestAgreesWithMemory:
    async def test_same_operations_same_results(self, store: SQLiteStorage) -> None:
        """The same sequence of writes reads back equal from SQLite and from memory."""
        memory = MemoryStorage()
        await memory.open()
        first, second = new_goal(tags=("qa", "docs")), new_goal(owner="bob")
        results: list[Any] = []
        for backend in (memory, store):
            for goal in (first, second):
                await backend.create_goal(transitions.create(goal))
            claimed = await backend.claim_goals("m1", ttl=60, limit=5)
            plan = (StepSpec("one"), StepSpec("two", "the second"))
            a = await _apply(backend, transitions.decomposed(claimed[0], plan, NOW, lease="m1"))
            a = await _apply(backend, transitions.step_started(a, a.steps[0], NOW + 1, lease="m1"))
            result = {"a": [1, 2.5, None, "é"], "b": {"c": True}}
            a = await _apply(
                backend, transitions.step_completed(a, a.steps[0], result, NOW + 2, lease="m1")
            )
            await backend.commit(transitions.cancel(a, NOW + 3))
            await backend.commit(
                transitions.fail(claimed[1], ErrorInfo("boom", "broke"), NOW + 4, lease="m1")
            )
            events = await backend.read_events(first.id)
            results.append(
                (
                    claimed,
                    await backend.get_goal(first.id),
                    await backend.get_goal(second.id, steps=False),
                    await backend.list_goals(),
                    await backend.goals_by_workflow(second.workflow_id),
                    [attrs.evolve(e, ts=0.0) for e in events],
                )
            )
        assert results[0] == results[1]


async def _apply(store: Storage, transition: transitions.Transition) -> Goal:
    await store.commit(transition)
    goal = await store.get_goal(transition.goal.id)
    assert goal is not None
    return goal


class TestTrio:
    @pytest.fixture
    def anyio_backend(self) -> str:
        return "trio"

    async def test_works_on_trio(self, db_path: Path) -> None:
        """The backend runs the same under trio."""
        store = SQLiteStorage(db_path)
        await store.open()
        try:
            goal = await start(store)
            with pytest.raises(LeaseLost):
                await store.commit(transitions.decomposing(goal, NOW, lease="m2"))
            assert [e.id for e in await store.read_events(goal.id)] == [1, 2]
        finally:
            await store.close()

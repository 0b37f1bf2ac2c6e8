"""``goalkit serve`` under a crash and a graceful stop (issue 5 points 1c and 5).

A real ``python -m goalkit serve`` subprocess (the `Server` of ``tests/test_serve.py``) on a
SQLite file in ``tmp_path``, driven over HTTP by concurrent httpx clients: a goal the API
acknowledged with 201 must survive a SIGKILL that follows at once, and goals running at a
SIGTERM must all complete after the restart. The store is checked directly afterwards
(``PRAGMA integrity_check``, gapless event logs, each step completed once).
"""

from __future__ import annotations

import signal
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from figures import record
from test_durability import check_completed, check_event_logs, integrity, snapshot
from test_serve import ROOT, THREE_STEPS, TOKENS, Server, auth, server_args

from goalkit.cli import SHUTDOWN_TIMEOUT

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]

CLIENTS = 8
"""Concurrent HTTP clients creating goals."""


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Server]:
    """A `goalkit serve` on ``tmp_path/g.db`` (not started); killed at the end, whatever happens."""
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(textwrap.dedent(TOKENS), encoding="utf-8")
    tokens.chmod(0o600)
    # Load, not limits, is tested here: one user creates hundreds of goals and streams.
    server = Server(
        tmp_path, *server_args(tmp_path, tokens), "--max-active-goals", "0", "--max-streams", "0"
    )
    yield server
    server.kill()


async def start(server: Server) -> None:
    await anyio.to_thread.run_sync(server.start)


def client(server: Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.url,
        headers=auth(ROOT),
        timeout=httpx.Timeout(60),
        limits=httpx.Limits(max_connections=CLIENTS),
    )


async def create_many(server: Server, count: int, model: str) -> list[str]:
    """Create `count` goals from `CLIENTS` concurrent clients; the ids answered with 201."""
    acknowledged: list[str] = []
    numbers = iter(range(count))

    async def worker(http: httpx.AsyncClient) -> None:
        for n in numbers:  # shared: each number is taken by one worker
            body = {"description": THREE_STEPS, "model": model, "tags": [f"n{n}"]}
            response = await http.post("/api/v1/goals", json=body)
            assert response.status_code == 201, response.text
            acknowledged.append(response.json()["data"]["id"])

    async with client(server) as http, anyio.create_task_group() as tg:
        for _ in range(CLIENTS):
            tg.start_soon(worker, http)
    return acknowledged


async def all_goals(http: httpx.AsyncClient, **query: Any) -> list[dict[str, Any]]:
    """Every goal the API lists (newest first), page by page."""
    found: list[dict[str, Any]] = []
    while True:
        response = await http.get(
            "/api/v1/goals", params={**query, "limit": 500, "offset": len(found)}
        )
        assert response.status_code == 200, response.text
        page = response.json()["data"]
        found += page
        if len(page) < 500:
            return found


async def until_all_ended(http: httpx.AsyncClient, seconds: float) -> None:
    """Poll the API until no goal is active; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        response = await http.get("/api/v1/goals", params={"status": "active", "limit": 1})
        if response.json()["meta"]["total"] == 0:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"goals still active after {seconds}s: {response.json()['meta']}")
        await anyio.sleep(0.2)


class TestAcknowledgedMeansStored:
    """A 201 from the API means the goal is on disk: a SIGKILL right after loses none."""

    @pytest.mark.parametrize(
        "count",
        [pytest.param(200, id="200"), pytest.param(1000, id="1000", marks=pytest.mark.slow)],
    )
    async def test_sigkill_after_201s_loses_nothing(self, serve: Server, count: int) -> None:
        """Every acknowledged goal is listed after the restart (and, slow variant, completes).

        The goals the killed server held resume once their leases expire: ``goalkit serve``
        uses the default `lease_ttl` of 30 s, which is why only the slow variant waits.
        """
        await start(serve)
        acknowledged = await create_many(serve, count, model="scripted/0.2")
        assert serve.proc is not None
        serve.proc.kill()  # at once, with goals running and writes in flight
        assert serve.proc.wait(timeout=10) == -signal.SIGKILL
        assert integrity(serve.workdir / "g.db") == "ok"

        await start(serve)
        async with client(serve) as http:
            listed = {g["id"] for g in await all_goals(http)}
            missing = set(acknowledged) - listed
            assert not missing, f"{len(missing)} acknowledged goals lost"
            assert len(acknowledged) == len(listed) == count
            if count > 200:
                await until_all_ended(http, seconds=180)
        serve.stop()
        state = await snapshot(serve.workdir / "g.db", limit=count)
        check_event_logs(state)
        if count > 200:
            check_completed(state, 3)
        record(
            "crash.http_acknowledged_then_sigkill",
            goals_acknowledged=len(acknowledged),
            clients=CLIENTS,
            goals_present_after_restart=len(listed),
            goals_lost=len(missing),
            goals_completed=sum(g.status == "completed" for g, _ in state.values()),
            integrity_check="ok",
        )


class TestGracefulShutdown:
    """SIGTERM with goals running: a clean, prompt exit, and every goal completes later."""

    GOALS = 50

    async def test_sigterm_with_50_goals_running(self, serve: Server) -> None:
        """Exit 0 within the grace period; after the restart 50/50 complete, none twice."""
        await start(serve)
        # 1 s steps: no goal can finish while the others are still being created.
        ids = await create_many(serve, self.GOALS, model="scripted/1")
        async with client(serve) as http:
            deadline = time.monotonic() + 60
            while True:  # every goal planned and inside its steps
                goals = await all_goals(http, status="active")
                if len(goals) == self.GOALS and all(g["phase"] == "running" for g in goals):
                    break
                assert time.monotonic() < deadline, "the goals did not all start"
                await anyio.sleep(0.1)
        code, took = await anyio.to_thread.run_sync(
            lambda: serve.stop(signal.SIGTERM, timeout=SHUTDOWN_TIMEOUT + 30)
        )
        assert code == 0, serve.stderr[-3000:]
        assert took < SHUTDOWN_TIMEOUT, f"took {took:.1f}s, more than the grace period"
        assert "Traceback" not in serve.stderr
        before = await snapshot(serve.workdir / "g.db")
        active = sum(not goal.done for goal, _ in before.values())
        assert active > 0, "the goals finished before the SIGTERM"
        # A clean stop hands the leases back: the restart resumes at once, counting no crash.
        assert all(goal.recoveries == 0 for goal, _ in before.values())

        await start(serve)
        async with client(serve) as http:
            await until_all_ended(http, seconds=60)
        serve.stop()
        state = await snapshot(serve.workdir / "g.db")
        assert set(state) == set(ids)
        check_event_logs(state)
        check_completed(state, 3)
        for goal_id, (_, events) in before.items():
            assert state[goal_id][1][: len(events)] == events  # nothing rewritten
        started = Counter(
            (g, e.data["step"])
            for g, (_, events) in state.items()
            for e in events
            if e.type == "goal.step_started"
        )
        assert max(started.values()) <= 2
        record(
            "shutdown.sigterm_with_goals_running",
            goals=self.GOALS,
            active_at_sigterm=active,
            exit_code=code,
            seconds_to_exit=round(took, 2),
            grace_period_seconds=SHUTDOWN_TIMEOUT,
            steps_run_twice=sum(n == 2 for n in started.values()),
            goals_completed=sum(g.status == "completed" for g, _ in state.values()),
            goals_lost=self.GOALS - len(state),
        )

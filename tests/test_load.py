"""Load through a real ``goalkit serve`` (issue 5 point 6): nothing lost, nothing out of order.

Each test starts ``python -m goalkit serve`` on a SQLite file and drives it with concurrent
httpx clients. CI runs a small version of each; the sizes the issue asks for (10,000 goals,
500 subscribers on 100 goals, 1,000 stream connect/disconnect cycles) are the ``slow``
variants. What is asserted is correctness (every goal, every event, in order) and memory
growth, never speed: throughput belongs to ``benchmarks/``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from figures import record
from test_durability import check_completed, check_event_logs, snapshot
from test_serve import ROOT, auth
from test_serve_reliability import all_goals, create_many, serve, start, until_all_ended

from goalkit.models import TERMINAL_EVENTS

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]

__all__ = ["serve"]  # the fixture, shared with test_serve_reliability


async def read_stream(http: httpx.AsyncClient, goal_id: str) -> list[dict[str, Any]]:
    """Every event one SSE connection delivers for `goal_id`, as (id, type, data) dicts."""
    events: list[dict[str, Any]] = []
    fields: dict[str, str] = {}
    async with http.stream("GET", f"/api/v1/goals/{goal_id}/events") as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith(":"):
                continue  # keep-alive
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if "data" in fields:
                data = json.loads(fields["data"])
                events.append({"id": int(fields["id"]), "type": fields["event"], "data": data})
                if fields["event"] in TERMINAL_EVENTS:
                    break
            fields = {}
    return events


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


class TestManyGoals:
    """Goals created by concurrent clients all complete; none is lost."""

    @pytest.mark.parametrize(
        "count",
        [pytest.param(200, id="200"), pytest.param(10_000, id="10000", marks=pytest.mark.slow)],
    )
    async def test_all_complete(self, serve: Any, count: int) -> None:
        """Every goal acknowledged with 201 is listed once and completes, each step once."""
        await start(serve)
        ids = await create_many(serve, count, model="scripted")
        async with httpx.AsyncClient(base_url=serve.url, headers=auth(ROOT), timeout=60) as http:
            await until_all_ended(http, seconds=max(60, count / 20))
            listed = [g["id"] for g in await all_goals(http)]
            completed = await http.get("/api/v1/goals", params={"status": "completed", "limit": 1})
        serve.stop()
        assert len(listed) == len(set(listed)) == count
        assert set(listed) == set(ids)
        assert completed.json()["meta"]["total"] == count
        state = await snapshot(serve.workdir / "g.db", limit=count)
        check_event_logs(state)
        check_completed(state, 3)
        record(
            "load.goals_over_http",
            goals_acknowledged=len(ids),
            goals_listed=len(listed),
            goals_completed=completed.json()["meta"]["total"],
            goals_lost=count - len(set(listed) & set(ids)),
        )


class TestManySubscribers:
    """Many SSE clients at once each receive every event of their goal, once and in order."""

    @pytest.mark.parametrize(
        ("clients", "goals"),
        [
            pytest.param(50, 10, id="50-clients"),
            pytest.param(500, 100, id="500-clients", marks=pytest.mark.slow),
        ],
    )
    async def test_every_event_in_order(self, serve: Any, clients: int, goals: int) -> None:
        """Each stream equals the goal's stored log: ids 1..n, same types and data."""
        await start(serve)
        ids = await create_many(serve, goals, model="scripted/0.5")
        seen: dict[int, list[dict[str, Any]]] = {}

        async def subscriber(n: int, http: httpx.AsyncClient) -> None:
            seen[n] = await read_stream(http, ids[n % goals])

        limits = httpx.Limits(max_connections=clients + 10)
        timeout = httpx.Timeout(120)
        async with (
            httpx.AsyncClient(
                base_url=serve.url, headers=auth(ROOT), timeout=timeout, limits=limits
            ) as http,
            anyio.create_task_group() as tg,
        ):
            for n in range(clients):
                tg.start_soon(subscriber, n, http)
        serve.stop()
        state = await snapshot(serve.workdir / "g.db")
        check_completed(state, 3)
        for n in range(clients):
            _, stored = state[ids[n % goals]]
            expected = [{"id": e.id, "type": e.type, "data": e.to_dict()} for e in stored]
            assert seen[n] == expected, f"subscriber {n} of {ids[n % goals]}"
        record(
            "load.sse_subscribers",
            clients=clients,
            goals=goals,
            events_delivered=sum(len(events) for events in seen.values()),
            events_missing_or_out_of_order=0,
        )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
class TestStreamMemory:
    """Connecting and disconnecting event streams does not grow the server's memory."""

    LIMIT_MIB = 50

    @pytest.mark.parametrize(
        "cycles",
        [pytest.param(100, id="100"), pytest.param(1000, id="1000", marks=pytest.mark.slow)],
    )
    async def test_connect_disconnect_cycles(self, serve: Any, cycles: int) -> None:
        """After `cycles` streams opened and dropped mid-goal, RSS is within 50 MiB."""
        await start(serve)
        (goal_id,) = await create_many(serve, 1, model="scripted/60")  # stays active

        async def cycle(http: httpx.AsyncClient) -> None:
            async with http.stream("GET", f"/api/v1/goals/{goal_id}/events") as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        break  # the first event: then hang up with the stream open

        async with httpx.AsyncClient(base_url=serve.url, headers=auth(ROOT), timeout=30) as http:
            for _ in range(50):  # warm up: imports, caches, allocator arenas
                await cycle(http)
            before = rss_mib(serve.proc.pid)
            for _ in range(cycles):
                await cycle(http)
            after = rss_mib(serve.proc.pid)
            goal = (await http.get(f"/api/v1/goals/{goal_id}")).json()["data"]
        assert goal["status"] == "active"  # the server still answers, the goal still runs
        assert after - before < self.LIMIT_MIB, f"RSS grew from {before:.1f} to {after:.1f} MiB"
        record(
            "load.sse_connect_disconnect",
            cycles=cycles,
            rss_before_mib=round(before, 1),
            rss_after_mib=round(after, 1),
            growth_mib=round(after - before, 1),
            limit_mib=self.LIMIT_MIB,
        )

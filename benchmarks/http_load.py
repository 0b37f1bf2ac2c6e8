"""HTTP and SSE: ``goalkit serve`` under load on loopback, beside a minimal Starlette endpoint.

    bash benchmarks/run http                 # in benchmarks/.venv (about 4 minutes)
    bash benchmarks/run http --quick         # 1 s per figure, 1 run, a small SSE run (~40 s)
    python benchmarks/http_load.py --duration 10 --repeat 5 --client raw --no-sse

Servers, each a real uvicorn process on 127.0.0.1 (a free port) on a fresh SQLite file in a
temporary directory:

* **goalkit**: ``goalkit serve`` exactly as a user starts it, with its generated admin token
  (the loopback default, docs/security.md), ``--max-active-goals 0`` (the per-user cap of
  100 active goals would refuse the create load after 100 requests), ``--max-streams 0``
  (the SSE run holds 500 streams as one user; the default cap is 10), ``--log-level warning``
  (no access log line per request: both servers alike) and ``--plugin
  benchmarks/http_provider.py``, a provider plugin whose model ``idle`` waits an hour in
  `plan`. The goals created under load use it: the first 100 are claimed and wait inside that
  call, the rest stay queued (``max_concurrent`` is 100), so the engine's background work is a
  lease renewal of 100 goals a second, not thousands of goals running beside the requests.
  A zero-latency model would have every created goal run its steps, 10 more writes each, on
  the same core during the measurement: the figure would be the engine's, not the HTTP
  layer's.
* **Starlette**: a minimal app (``starlette`` is a benchmarks-only dependency) whose POST and
  GET endpoints make the same storage calls as goalkit's (`SQLiteStorage.create_goal` of
  `transitions.create(goal)` and `SQLiteStorage.get_goal`) and answer the same JSON
  envelope, with no authentication, no validation of the fields and no engine: the floor for
  "HTTP plus the same storage call". It runs under the same uvicorn settings as ``goalkit
  serve`` (see `uvicorn_settings`): one process, the standard library's asyncio loop, and
  uvicorn's ``http="auto"`` (httptools when installed, else h11: the table says which).

The load generator is its own process with `--connections` (64) keep-alive connections, one
task each, sending requests back to back for 1 s of warm-up and then `--duration` seconds (5)
that are measured, in two versions (`--client`, both by default):

* ``raw``: a hand-written HTTP/1.1 client on asyncio streams (one write per request, two
  reads per response), which spends about 50–70 µs of CPU per request, so the server sets
  the pace;
* ``httpx``: one ``httpx.AsyncClient`` per connection, about 500 µs of CPU per request, so
  on this machine it fills its core below 2,000 requests/s, less than either server
  answers. (A single client with a pool of 64 connections spends about 6 ms per request in
  httpcore's pool bookkeeping and measures nothing but itself.)

``create`` posts ``{"description": …, "model": "idle"}``; ``get`` reads goals at random among
1,000 created beforehand through the same server's POST. Reported per run: requests completed
per second in the measured window, their p50 and p99 latency, the server's CPU time per
request (``/proc/<pid>/stat``, all its threads) and the client's CPU use. Any answer other
than 201 (create) or 200 (get) fails the run.

The machine has 2 cores and the client competes with the server for them. Unless
``--no-pin``, the server is pinned to CPU 0 and the client to CPU 1 (`os.sched_setaffinity`),
the same for both servers, so neither takes the other's core; "client CPU" near 100 % means
the client, not the server, set the pace. The server's CPU per request does not depend on it.

SSE (goalkit only): `--sse-goals` (100) goals of the model ``paced/<steps>/<ms>`` of the same
plugin (`--sse-steps` 10 steps, each provider call sleeping `--sse-ms` 10 ms times 0.5 to 1.5,
so events are spread out: 2 × steps + 3 events per goal), created over HTTP; their `plan`
waits for a gate file. `--sse-subscribers` (5) raw HTTP/1.1 streaming connections per goal
(500) open ``GET /api/v1/goals/{id}/events``, and only when every one of them has received
event 1 (``goal.created``, stored before it connected) is the gate opened. Every subscriber
must then receive every stored event of its goal exactly once and in order: ids 1..N with no
gap, ending with ``goal.completed``, then the end of the response, each event equal to the
goal's events replayed from storage afterwards (a stream from ``after=0``). Any difference
fails the run loudly: the table says FAILED and the script exits 1. Delivery latency is the
receive time (``time.time()`` on the client) minus the event's ``ts`` (``time.time()`` at its
commit on the server, same machine clock, stored to the millisecond, so ±0.5 ms), over every
event after ``goal.created``.

Each measurement runs in fresh processes (a new server and a new client); figures are medians
of ``--repeat`` runs (3) with min–max, runs interleaved so load drift hits both servers alike.
The table is printed and written to ``benchmarks/results/http.md``.
"""
# ruff: noqa: E402

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

import argparse
import asyncio
import importlib.util
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Protocol

from report import machine, spread

RESULTS = HERE / "results" / "http.md"
PLUGIN = HERE / "http_provider.py"
GATE_VARIABLE = "GOALKIT_BENCH_GATE"
HOST = "127.0.0.1"
SERVER_CPU, CLIENT_CPU = 0, 1
PREFILL = 1000
WARMUP = 1.0
TERMINAL = ("goal.completed", "goal.failed", "goal.cancelled")
BODY = {"description": "a benchmark goal that waits in its plan", "model": "idle"}
SERVERS = {"goalkit": "`goalkit serve`", "starlette": "Starlette + SQLiteStorage"}
OPERATIONS = {"create": "POST /api/v1/goals", "get": "GET /api/v1/goals/{id}"}


def uvicorn_settings() -> dict[str, Any]:
    """The `uvicorn.Config` settings of the Starlette server: those `goalkit serve` passes.

    ``goalkit serve`` runs `uvicorn.Server.serve` under `anyio.run` (the standard library's
    asyncio loop) with these bounds (goalkit/cli.py); the Starlette server runs with
    ``loop="asyncio"`` and the same ``http="auto"``, lifespan, limits and keep-alive.
    """
    return {
        "lifespan": "on",
        "loop": "asyncio",
        "http": "auto",
        "log_level": "warning",
        "server_header": False,
        "limit_concurrency": 1000,
        "timeout_keep_alive": 5,
        "timeout_graceful_shutdown": 5,
        "h11_max_incomplete_event_size": 16 * 1024,
    }


def http_impl() -> str:
    return "httptools" if importlib.util.find_spec("httptools") else "h11"


# -- the Starlette floor (runs in the server process) -------------------------------------------


def starlette_app(db: Path) -> Any:
    """POST and GET doing goalkit's storage calls, JSON in and out, nothing else."""
    import attrs
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from goalkit import transitions
    from goalkit.engine import now
    from goalkit.models import Goal, new_goal_id, new_workflow_id
    from goalkit.storage.sqlite import SQLiteStorage

    storage = SQLiteStorage(db)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        await storage.open()
        try:
            yield
        finally:
            await storage.close()

    async def create(request: Request) -> Response:
        body = await request.json()
        stamp = now()
        goal = Goal(
            id=new_goal_id(),
            workflow_id=new_workflow_id(),
            description=body["description"],
            model=body.get("model", "scripted"),
            mode="plan",
            max_steps=10,
            max_retries=2,
            tags=(),
            owner="admin",
            status="active",
            phase="created",
            created_at=stamp,
            updated_at=stamp,
        )
        event = await storage.create_goal(transitions.create(goal))
        goal = attrs.evolve(goal, last_event_id=event.id)
        return JSONResponse(
            {"ok": True, "data": goal.to_dict()},
            status_code=201,
            headers={"location": f"/api/v1/goals/{goal.id}"},
        )

    async def get(request: Request) -> Response:
        goal = await storage.get_goal(request.path_params["goal_id"])
        if goal is None:
            return JSONResponse({"ok": False, "error": {"code": "not_found"}}, status_code=404)
        return JSONResponse({"ok": True, "data": goal.to_dict()})

    routes = [
        Route("/api/v1/goals", create, methods=["POST"]),
        Route("/api/v1/goals/{goal_id}", get, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def serve_starlette(db: Path, port: int) -> None:
    import uvicorn

    config = uvicorn.Config(starlette_app(db), host=HOST, port=port, **uvicorn_settings())
    uvicorn.Server(config).run()


# -- servers (started by the driver) ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(cpu: int | None) -> Any:
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


class Server:
    """One server process on a fresh SQLite file; `url`, `token` and `pid` once started."""

    def __init__(self, kind: str, tmp: Path, cpu: int | None) -> None:
        self.kind = kind
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.token: str | None = None
        self.gate = tmp / "gate"
        self.log = tmp / "server.log"
        db = tmp / "bench.db"
        if kind == "goalkit":
            script = Path(sys.executable).with_name("goalkit")
            command = [str(script)] if script.exists() else [sys.executable, "-m", "goalkit"]
            command += [
                "serve",
                "--storage",
                f"sqlite:///{db}",
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--plugin",
                str(PLUGIN),
                "--max-active-goals",
                "0",
                "--max-streams",
                "0",
                "--log-level",
                "warning",
            ]
        else:
            command = [sys.executable, __file__, "--serve-starlette", str(db), str(self.port)]
        env = {**os.environ, GATE_VARIABLE: str(self.gate)}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=pinned(cpu),
            )
        self.pid = self.process.pid
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited at start:\n{self.output()}")
            if self.kind == "goalkit" and self.token is None:
                for line in self.output().splitlines():
                    if "admin token (shown once):" in line:
                        self.token = line.rsplit(" ", 1)[1].strip()
            if self.kind != "goalkit" or self.token is not None:
                try:
                    socket.create_connection((HOST, self.port), timeout=1).close()
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        self.process.kill()
        raise RuntimeError(f"{self.kind} server did not start in {timeout:.0f} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, then check that it stopped cleanly and logged no error."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(
                f"{self.kind} server did not stop on SIGTERM:\n{self.output()}"
            ) from None
        text = self.output()
        # uvicorn.Server.run re-raises the SIGTERM it handled once it has shut down (goalkit
        # serve makes that an exit 0): either is a clean stop.
        if code not in (0, -signal.SIGTERM) or "Traceback" in text or "ERROR" in text:
            raise RuntimeError(f"{self.kind} server exited with {code} or logged errors:\n{text}")


def run_child(args: list[str], cpu: int | None, timeout: float) -> dict[str, Any]:
    answer = subprocess.run(
        [sys.executable, __file__, *args],
        capture_output=True,
        text=True,
        preexec_fn=pinned(cpu),
        timeout=timeout,
        check=False,
    )
    if answer.returncode != 0:
        raise RuntimeError(f"client {args[0]} failed ({answer.returncode}):\n{answer.stderr}")
    result: dict[str, Any] = json.loads(answer.stdout.strip().splitlines()[-1])
    return result


# -- the load generator (its own process) --------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid`, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Connection(Protocol):
    """One keep-alive connection of the load generator."""

    async def request(
        self, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, bytes]: ...

    async def close(self) -> None: ...


class HttpxConnection:
    """One keep-alive connection through an `httpx.AsyncClient` of its own.

    One client per connection: httpx's own pool, given 64 connections, spends about 6 ms of
    client CPU per request in its connection bookkeeping (httpcore 1.0), 12 times what 64
    clients of one connection each spend: the client would be all that is measured.
    """

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        import httpx

        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self.client = httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30)

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"content-type": "application/json"} if body is not None else None
        answer = await self.client.request(method, path, content=body, headers=headers)
        return answer.status_code, answer.content

    async def close(self) -> None:
        await self.client.aclose()


class RawConnection:
    """One keep-alive HTTP/1.1 connection written and read by hand (asyncio streams).

    The lean client: a request is one write and a response two reads (the head, then
    ``Content-Length`` bytes), about a tenth of httpx's CPU per request, so that the server,
    not the client, sets the pace. Both servers answer with ``Content-Length``.
    """

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.port = int(url.rsplit(":", 1)[1])
        self.head = f"Host: {HOST}:{self.port}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()
        )
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(HOST, self.port)
        reader, writer = self.streams
        extra = b""
        if body is not None:
            extra = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode()
        writer.write(
            f"{method} {path} HTTP/1.1\r\n{self.head}".encode() + extra + b"\r\n" + (body or b"")
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await reader.readexactly(length)

    async def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()


CLIENTS: dict[str, Callable[[str, dict[str, str]], Connection]] = {
    "httpx": HttpxConnection,
    "raw": RawConnection,
}


async def load(config: dict[str, Any]) -> dict[str, Any]:
    op, connections, duration = config["op"], config["connections"], config["duration"]
    headers = {"Authorization": f"Bearer {config['token']}"} if config["token"] else {}
    connect = CLIENTS[config["client"]]
    pool: list[Connection] = [connect(config["url"], headers) for _ in range(connections)]
    body = json.dumps(BODY).encode()
    try:
        ids: list[str] = []
        if op == "get":
            todo = iter(range(config["prefill"]))

            async def prefill(conn: Connection) -> None:
                for _ in todo:
                    status, answer = await conn.request("POST", "/api/v1/goals", body)
                    if status != 201:
                        raise RuntimeError(f"prefill: {status} {answer[:300]!r}")
                    ids.append(json.loads(answer)["data"]["id"])

            await asyncio.gather(*(prefill(conn) for conn in pool))

        loop = asyncio.get_running_loop()
        start = loop.time() + config["warmup"]
        end = start + duration
        latencies: list[float] = []
        failures: list[str] = []
        cpu: dict[str, float] = {}

        async def worker(conn: Connection) -> None:
            while (sent := loop.time()) < end:
                if op == "create":
                    status, answer = await conn.request("POST", "/api/v1/goals", body)
                    expected = 201
                else:
                    status, answer = await conn.request(
                        "GET", f"/api/v1/goals/{random.choice(ids)}"
                    )
                    expected = 200
                done = loop.time()
                if status != expected:
                    failures.append(f"{status} {answer[:300]!r}")
                    return
                if start <= done <= end:
                    latencies.append(done - sent)

        async def sample() -> None:
            await asyncio.sleep(start - loop.time())
            cpu["server"], cpu["client"] = cpu_seconds(config["pid"]), time.process_time()
            await asyncio.sleep(end - loop.time())
            cpu["server"] = cpu_seconds(config["pid"]) - cpu["server"]
            cpu["client"] = time.process_time() - cpu["client"]

        await asyncio.gather(sample(), *(worker(conn) for conn in pool))
    finally:
        for conn in pool:
            await conn.close()
    if failures:
        raise RuntimeError(f"{len(failures)} {op} requests failed, e.g. {failures[0]}")
    n = len(latencies)
    return {
        "rate": n / duration,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "server_cpu_us": cpu["server"] / n * 1e6,
        "client_cpu": cpu["client"] / duration,
        "requests": n,
    }


# -- the SSE subscribers (their own process) ------------------------------------------------------


class Subscriber:
    """One raw HTTP/1.1 event stream: what it received, with the time of receipt."""

    def __init__(self, goal_id: str) -> None:
        self.goal_id = goal_id
        self.events: list[tuple[float, int, str, dict[str, Any]]] = []
        self.ready = asyncio.Event()
        self.ended = False
        self.error: str | None = None

    async def run(self, port: int, token: str, after: int = 0) -> None:
        try:
            await self._run(port, token, after)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.ready.set()

    async def _run(self, port: int, token: str, after: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(
                (
                    f"GET /api/v1/goals/{self.goal_id}/events?after={after} HTTP/1.1\r\n"
                    f"Host: {HOST}:{port}\r\nAuthorization: Bearer {token}\r\n"
                    "Accept: text/event-stream\r\n\r\n"
                ).encode()
            )
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            if not head.startswith("http/1.1 200"):
                raise RuntimeError(f"answered {head.splitlines()[0]}")
            chunked = "transfer-encoding: chunked" in head
            buffer = b""
            while True:
                if chunked:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    data = await reader.readexactly(size + 2)
                    data = data[:-2]
                    if size == 0:
                        break
                else:
                    data = await reader.read(65536)
                    if not data:
                        break
                received = time.time()
                buffer += data
                *messages, buffer = buffer.split(b"\n\n")
                for message in messages:
                    self._message(message, received)
            if buffer.strip():
                raise RuntimeError(f"the stream ended inside a message: {buffer[:200]!r}")
            self.ended = True
        finally:
            writer.close()

    def _message(self, message: bytes, received: float) -> None:
        fields: dict[str, str] = {}
        for line in message.decode().split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        if "data" not in fields:
            return  # the retry: line
        event = json.loads(fields["data"])
        if str(event["id"]) != fields.get("id") or event["type"] != fields.get("event"):
            raise RuntimeError(f"id/event lines disagree with the data: {fields}")
        self.events.append((received, event["id"], event["type"], event))
        if event["id"] == 1:
            self.ready.set()


async def sse(config: dict[str, Any]) -> dict[str, Any]:
    import httpx

    port, token = config["port"], config["token"]
    goals, per_goal, steps = config["goals"], config["subscribers"], config["steps"]
    model = f"paced/{steps}/{config['ms']}"
    expected_events = 2 * steps + 3
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=config["url"], headers=headers, timeout=30.0) as client:

        async def create() -> str:
            answer = await client.post(
                "/api/v1/goals", json={"description": "an SSE benchmark goal", "model": model}
            )
            if answer.status_code != 201:
                raise RuntimeError(f"create: {answer.status_code} {answer.text}")
            goal_id: str = answer.json()["data"]["id"]
            return goal_id

        ids = list(await asyncio.gather(*(create() for _ in range(goals))))
        subscribers = [Subscriber(goal_id) for goal_id in ids for _ in range(per_goal)]
        tasks = [asyncio.create_task(s.run(port, token)) for s in subscribers]
        await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in subscribers)), 60)
        not_ready = [s for s in subscribers if s.error or not s.events]
        if not_ready:
            raise RuntimeError(
                f"{len(not_ready)} subscribers did not get goal.created: {not_ready[0].error}"
            )
        opened, cpu = time.time(), cpu_seconds(config["pid"])
        await asyncio.to_thread(Path(config["gate"]).touch)
        _, pending = await asyncio.wait(tasks, timeout=config["timeout"])
        ended, cpu = time.time(), cpu_seconds(config["pid"]) - cpu
        for task in pending:
            task.cancel()

        # The stored truth: each goal's events replayed from storage, and its row.
        replays = [Subscriber(goal_id) for goal_id in ids]
        await asyncio.gather(*(r.run(port, token) for r in replays))
        stored = {r.goal_id: r for r in replays}
        rows = {}
        for goal_id in ids:
            answer = await client.get(f"/api/v1/goals/{goal_id}")
            rows[goal_id] = answer.json()["data"]

    failures: list[str] = []
    if pending:
        failures.append(f"{len(pending)} of {len(tasks)} streams had not ended after the timeout")
    latencies: list[float] = []
    for s in subscribers:
        truth = stored[s.goal_id]
        row = rows[s.goal_id]
        where = f"goal {s.goal_id}"
        if truth.error or not truth.ended:
            failures.append(f"{where}: the replay failed: {truth.error}")
            continue
        want = [(i, t, e) for _, i, t, e in truth.events]
        if row["status"] != "completed" or len(want) != expected_events:
            failures.append(f"{where}: {row['status']} with {len(want)} stored events")
        if [i for i, _, _ in want] != list(range(1, len(want) + 1)):
            failures.append(f"{where}: stored ids are not 1..N: {[i for i, _, _ in want]}")
        got = [(i, t, e) for _, i, t, e in s.events]
        if s.error or not s.ended:
            failures.append(f"{where}: a subscriber's stream failed: {s.error or 'not ended'}")
        elif got != want:
            ids_got = [i for i, _, _ in got]
            failures.append(f"{where}: a subscriber got ids {ids_got}, stored 1..{len(want)}")
        elif got[-1][1] not in TERMINAL:
            failures.append(f"{where}: the last event is {got[-1][1]}")
        latencies += [received - event["ts"] for received, i, _, event in s.events if i > 1]
    deliveries = sum(len(s.events) for s in subscribers)
    return {
        "failures": failures,
        "subscribers": len(subscribers),
        "events": sum(len(r.events) for r in replays),
        "deliveries": deliveries,
        "latencies": latencies,
        "elapsed": ended - opened,
        "server_cpu": cpu / (ended - opened),
    }


# -- the driver ------------------------------------------------------------------------------------


@contextmanager
def server(kind: str, pin: bool) -> Any:
    with tempfile.TemporaryDirectory(prefix="goalkit-http-") as tmp:
        started = Server(kind, Path(tmp), SERVER_CPU if pin else None)
        try:
            yield started
        except BaseException:
            started.process.kill()
            started.process.wait()
            raise
        started.stop()


def measure_load(client: str, kind: str, op: str, args: argparse.Namespace) -> dict[str, Any]:
    with server(kind, args.pin) as s:
        config = {
            "client": client,
            "op": op,
            "url": s.url,
            "token": s.token,
            "pid": s.pid,
            "connections": args.connections,
            "duration": args.duration,
            "warmup": args.warmup,
            "prefill": args.prefill,
        }
        return run_child(
            ["--load", json.dumps(config)], CLIENT_CPU if args.pin else None, 300 + args.duration
        )


def measure_sse(args: argparse.Namespace) -> dict[str, Any]:
    with server("goalkit", args.pin) as s:
        config = {
            "url": s.url,
            "port": s.port,
            "token": s.token,
            "gate": str(s.gate),
            "pid": s.pid,
            "goals": args.sse_goals,
            "subscribers": args.sse_subscribers,
            "steps": args.sse_steps,
            "ms": args.sse_ms,
            "timeout": 120,
        }
        return run_child(["--sse", json.dumps(config)], CLIENT_CPU if args.pin else None, 400)


def loadavg() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def table(args: argparse.Namespace) -> tuple[str, bool]:
    """Run every measurement, interleaved; the Markdown table, and whether SSE failed."""
    runs: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    sse_runs: list[dict[str, Any]] = []
    loads = [loadavg()]
    clients = [] if args.sse_only else args.clients
    for r in range(args.repeat):
        for client in clients:
            for op in OPERATIONS:
                for kind in SERVERS:  # interleaved: drift hits both alike
                    print(
                        f"run {r + 1}/{args.repeat}: {op} on {kind}, {client} client …",
                        file=sys.stderr,
                        flush=True,
                    )
                    key = (client, kind, op)
                    runs.setdefault(key, []).append(measure_load(client, kind, op, args))
        if not args.no_sse:
            print(f"run {r + 1}/{args.repeat}: SSE …", file=sys.stderr, flush=True)
            sse_runs.append(measure_sse(args))
        loads.append(loadavg())

    lines = _http_table(args, clients, runs) if clients else []
    failed = False
    if sse_runs:
        text, failed = _sse_table(args, sse_runs)
        lines += text
    lines += [
        f"Load average (1, 5, 15 min) before the runs: {loads[0]}; after: {loads[-1]}. "
        + machine(),
    ]
    return "\n".join(lines) + "\n", failed


def _http_table(
    args: argparse.Namespace,
    clients: list[str],
    runs: dict[tuple[str, str, str], list[dict[str, Any]]],
) -> list[str]:
    import uvicorn

    pinning = (
        f"server pinned to CPU {SERVER_CPU}, client to CPU {CLIENT_CPU}"
        if args.pin
        else "no CPU pinning"
    )
    lines = [
        f"HTTP on 127.0.0.1, {args.connections} keep-alive connections, {args.warmup:g} s warm-up "
        f"then {args.duration:g} s measured per run; median (min–max) of {args.repeat} runs, "
        f"each a fresh server and client process; {pinning}. Both servers: uvicorn "
        f"{uvicorn.__version__}, one process, asyncio loop, {http_impl()}, access log off.",
        "",
        "| operation | client | server | requests/s | p50 ms | p99 ms | "
        "server CPU µs/request | client CPU |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    rate: dict[tuple[str, str, str], float] = {}
    cost: dict[tuple[str, str, str], float] = {}
    for client in clients:
        for op, what in OPERATIONS.items():
            for kind, name in SERVERS.items():
                xs = runs[client, kind, op]
                rate[client, kind, op] = statistics.median(x["rate"] for x in xs)
                cost[client, kind, op] = statistics.median(x["server_cpu_us"] for x in xs)
                lines.append(
                    f"| {what} | {client} | {name} | "
                    f"{spread([x['rate'] for x in xs], '{:,.0f}')} | "
                    f"{spread([x['p50_ms'] for x in xs], '{:.1f}')} | "
                    f"{spread([x['p99_ms'] for x in xs], '{:.1f}')} | "
                    f"{spread([x['server_cpu_us'] for x in xs], '{:,.0f}')} | "
                    f"{spread([x['client_cpu'] * 100 for x in xs], '{:.0f}')} % |"
                )
    lines += [
        "",
        "| operation | client | goalkit / Starlette, requests/s | goalkit / Starlette, server "
        "CPU per request |",
        "| --- | --- | ---: | ---: |",
    ]
    for client in clients:
        for op, what in OPERATIONS.items():
            ours, floor = (client, "goalkit", op), (client, "starlette", op)
            lines.append(
                f"| {what} | {client} | {rate[ours] / rate[floor]:.2f}× | "
                f"{cost[ours] / cost[floor]:.2f}× |"
            )
    lines += [
        "",
        "requests/s: requests completed in the measured window over its length. Server CPU: "
        "user + system time of the server process (all its threads) in the window over the "
        "requests completed, which does not depend on the client's speed. Client CPU: the "
        "load generator's CPU time over the window (100 % is its whole core: then the client "
        "set the pace, not the server). raw: a hand-written keep-alive HTTP/1.1 client; "
        "httpx: one `httpx.AsyncClient` per connection. goalkit: `goalkit serve "
        "--max-active-goals 0 --max-streams 0 --log-level warning --plugin "
        "benchmarks/http_provider.py` with its generated admin token; created goals use the "
        "plugin's model `idle`, which waits in `plan`, so the engine stays idle (see the "
        "script's docstring). Starlette: the same storage calls, no auth, no validation, no "
        "engine.",
        "",
    ]
    return lines


def _sse_table(args: argparse.Namespace, sse_runs: list[dict[str, Any]]) -> tuple[list[str], bool]:
    failures = [f for x in sse_runs for f in x["failures"]]
    first = sse_runs[0]
    verdict = (
        f"**FAILED**: {len(failures)} problems, e.g. {failures[0]}"
        if failures
        else "yes, in every run"
    )
    lat = [x["latencies"] for x in sse_runs]
    ms = {q: [percentile(v, q) * 1000 for v in lat if v] for q in (0.5, 0.9, 0.99, 1.0)}
    lines = [
        f"SSE: {args.sse_goals} goals of {args.sse_steps} steps ({2 * args.sse_steps + 3} "
        f"events each; each provider call sleeps {args.sse_ms} ms × 0.5–1.5) on `goalkit "
        f"serve`, {first['subscribers']} raw streaming subscribers ({args.sse_subscribers} per "
        "goal) connected before the goals' first event after `goal.created`; median (min–max) "
        f"of {len(sse_runs)} runs.",
        "",
        "| subscribers | events stored | deliveries | each subscriber got every event once, "
        "in order | latency p50 ms | p90 ms | p99 ms | max ms | latencies | gate to last end, "
        "s | server CPU |",
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {first['subscribers']} | {first['events']:,} | "
        f"{spread([x['deliveries'] for x in sse_runs], '{:,.0f}')} | {verdict} | "
        f"{spread(ms[0.5], '{:.1f}')} | {spread(ms[0.9], '{:.1f}')} | "
        f"{spread(ms[0.99], '{:.1f}')} | {spread(ms[1.0], '{:.1f}')} | "
        f"{spread([len(v) for v in lat], '{:,.0f}')} | "
        f"{spread([x['elapsed'] for x in sse_runs], '{:.2f}')} | "
        f"{spread([x['server_cpu'] * 100 for x in sse_runs], '{:.0f}')} % |",
        "",
        "Latency: the subscriber's receive time minus the event's `ts` (stored at its commit, "
        "to the ms, same clock), over every delivered event after `goal.created` (which is "
        "stored before the subscribers connect). Checked per subscriber against the goal's "
        "events replayed from storage afterwards: ids 1..N with no gap or repeat, the same "
        "events, `goal.completed` last, then the end of the response. Server CPU: the server "
        "process's CPU time from the gate's opening to the last stream's end over that time "
        "(100 % is its whole core).",
        "",
    ]
    return lines, bool(failures)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, help="measured seconds per run (5; 1 --quick)")
    parser.add_argument("--warmup", type=float, default=WARMUP, help="seconds before measuring (1)")
    parser.add_argument("--repeat", type=int, help="runs per figure (default 3; 1 with --quick)")
    parser.add_argument("--connections", type=int, default=64, help="client connections (64)")
    parser.add_argument("--prefill", type=int, help=f"goals created before get ({PREFILL})")
    parser.add_argument("--sse-goals", type=int, help="goals in the SSE run (100; 20 --quick)")
    parser.add_argument("--sse-subscribers", type=int, default=5, help="streams per goal (5)")
    parser.add_argument("--sse-steps", type=int, help="steps per SSE goal (10; 3 --quick)")
    parser.add_argument("--sse-ms", type=int, default=10, help="ms per provider call (10)")
    parser.add_argument(
        "--client",
        dest="clients",
        action="append",
        choices=sorted(CLIENTS),
        help="load generator (repeatable; default: raw and httpx)",
    )
    parser.add_argument("--no-sse", action="store_true", help="skip the SSE run")
    parser.add_argument("--sse-only", action="store_true", help="only the SSE run")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="no CPU pinning")
    parser.add_argument("--quick", action="store_true", help="a smoke run of about 30 s")
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help="where to write the table (results/http.md)"
    )
    parser.add_argument("--serve-starlette", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--sse", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_starlette:
        serve_starlette(Path(args.serve_starlette[0]), int(args.serve_starlette[1]))
        return 0
    if args.load or args.sse:
        result = asyncio.run(
            load(json.loads(args.load)) if args.load else sse(json.loads(args.sse))
        )
        print(json.dumps(result))
        return 0
    args.clients = args.clients or ["raw", "httpx"]
    args.duration = args.duration or (1.0 if args.quick else 5.0)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.prefill = args.prefill or (200 if args.quick else PREFILL)
    args.sse_goals = args.sse_goals or (20 if args.quick else 100)
    args.sse_steps = args.sse_steps or (3 if args.quick else 10)
    if args.pin and (os.cpu_count() or 1) < 2:
        args.pin = False
    if min(args.duration, args.repeat, args.connections, args.prefill) <= 0 or args.warmup < 0:
        parser.error("--duration, --repeat, --connections and --prefill must be positive")
    if not 1 <= args.sse_steps <= 10:
        parser.error("--sse-steps must be from 1 to 10 (a goal's max_steps)")
    missing = [m for m in ("uvicorn", "starlette", "httpx") if not importlib.util.find_spec(m)]
    if missing:
        parser.error(
            f"{', '.join(missing)} not installed: run `bash benchmarks/run http` "
            "(or pip install -r benchmarks/requirements.txt)"
        )
    text, failed = table(args)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"written to {args.output}", file=sys.stderr)
    if failed:
        print("SSE DELIVERY FAILED: see the table above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``goalkit serve`` end to end: a real uvicorn subprocess on 127.0.0.1, driven with httpx."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from goalkit.cli import SHUTDOWN_TIMEOUT

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

START_TIMEOUT = 20.0
TOKENS = """
[tokens]
"alice-token" = { user = "alice" }
"bob-token" = { user = "bob" }
"root-token" = { user = "root", admin = true }
"""
ALICE, BOB, ROOT = "alice-token", "bob-token", "root-token"
THREE_STEPS = "Find sources. Read them. Summarise them."
SIX_STEPS = "Step one. Step two. Step three. Step four. Step five. Step six."


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Server:
    """One ``python -m goalkit serve`` subprocess; its output goes to files in `workdir`."""

    def __init__(self, workdir: Path, *args: str, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = ["--port", str(self.port), *args]
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> Server:
        self.runs += 1
        self.stderr_path = self.workdir / f"serve-{self.runs}.err"
        self.stdout_path = self.workdir / f"serve-{self.runs}.out"
        with self.stderr_path.open("wb") as err, self.stdout_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "goalkit", "serve", *self.args],
                cwd=self.workdir,
                stdout=out,
                stderr=err,
                env={**os.environ, "PYTHONIOENCODING": "utf-8"},
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"goalkit serve exited {self.proc.returncode}: {self.stderr}")
            try:
                if httpx.get(f"{self.url}/api/v1/openapi.json", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"goalkit serve did not answer in {START_TIMEOUT}s: {self.stderr}")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    @property
    def output(self) -> str:
        return self.stderr + self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> tuple[int, float]:
        """Send `sig`; return the exit code and the seconds it took to exit."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers=auth(token) if token else {}, timeout=httpx.Timeout(15)
        )


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.toml"
    path.write_text(textwrap.dedent(TOKENS), encoding="utf-8")
    path.chmod(0o600)
    return path


def server_args(tmp_path: Path, tokens_file: Path) -> list[str]:
    db = tmp_path / "g.db"
    return ["--storage", f"sqlite:///{db}", "--tokens", str(tokens_file), "--log-level", "info"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server shared by the tests that do not stop it."""
    workdir = tmp_path_factory.mktemp("serve")
    tokens = workdir / "tokens.toml"
    tokens.write_text(textwrap.dedent(TOKENS), encoding="utf-8")
    tokens.chmod(0o600)
    running = Server(workdir, *server_args(workdir, tokens)).start()
    yield running
    code, _ = running.stop()
    assert code == 0, running.stderr
    for token in (ALICE, BOB, ROOT):
        assert token not in running.output  # never logged, not even in the access log


def sse(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Parse a server-sent event stream into dicts of its fields (`data` decoded)."""
    fields: dict[str, Any] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in fields:
                fields["data"] = json.loads(fields["data"])
                yield fields
            fields = {}
        elif line.startswith(":"):
            continue  # a keep-alive comment
        else:
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value


def create(client: httpx.Client, description: str, **fields: Any) -> dict[str, Any]:
    response = client.post("/api/v1/goals", json={"description": description, **fields})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["ok"] is True
    goal: dict[str, Any] = body["data"]
    return goal


def stream(
    client: httpx.Client, goal_id: str, *, last: int | None = None, stop_after: str | None = None
) -> list[dict[str, Any]]:
    """The events of a goal from one connection: to the end, or up to `stop_after` (a type)."""
    headers = {"Last-Event-ID": str(last)} if last is not None else {}
    events = []
    with client.stream("GET", f"/api/v1/goals/{goal_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        for event in sse(response):
            events.append(event)
            if event["event"] == stop_after:
                break
    return events


def ids(events: list[dict[str, Any]]) -> list[int]:
    return [int(e["id"]) for e in events]


class TestRest:
    """The REST endpoints answer through a real server as SPEC §4 says."""

    def test_create_get_list_cancel(self, server: Server) -> None:
        """Create 201, get 200, listed, cancel 200, cancel again 409."""
        with server.client(ALICE) as alice:
            goal = create(alice, THREE_STEPS, model="scripted/0.3", tags=["e2e"])
            assert goal["id"].startswith("goal-") and goal["workflow_id"].startswith("wf-")
            assert goal["owner"] == "alice" and goal["status"] == "active"

            got = alice.get(f"/api/v1/goals/{goal['id']}")
            assert got.status_code == 200
            assert got.json()["data"]["id"] == goal["id"]
            assert "steps" in got.json()["data"]

            listed = alice.get("/api/v1/goals", params={"tag": "e2e"})
            assert listed.status_code == 200
            assert [g["id"] for g in listed.json()["data"]] == [goal["id"]]
            assert listed.json()["meta"]["total"] == 1

            cancelled = alice.delete(f"/api/v1/goals/{goal['id']}")
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["data"]["status"] == "cancelled"
            assert cancelled.json()["data"]["id"] == goal["id"]

            again = alice.delete(f"/api/v1/goals/{goal['id']}")
            assert again.status_code == 409
            assert again.json() == {"ok": False, "error": again.json()["error"]}
            assert again.json()["error"]["code"] == "conflict"

    def test_unknown_goal_404(self, server: Server) -> None:
        """An unknown goal id is a 404 with the error envelope."""
        with server.client(ALICE) as alice:
            response = alice.get("/api/v1/goals/goal-0000000000000000")
        assert response.status_code == 404
        assert response.json()["ok"] is False
        assert response.json()["error"]["code"] == "not_found"

    @pytest.mark.parametrize("token", [None, "wrong-token", ALICE + "x"])
    def test_unauthenticated_401(self, server: Server, token: str | None) -> None:
        """No token or an unknown one: 401 with WWW-Authenticate: Bearer."""
        with server.client(token) as client:
            response = client.get("/api/v1/goals")
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["ok"] is False
        assert token is None or token not in response.text

    def test_other_user_403_admin_200(self, server: Server) -> None:
        """Bob may not read, stream or cancel Alice's goal; the admin may; lists are scoped."""
        with server.client(ALICE) as alice, server.client(BOB) as bob, server.client(ROOT) as root:
            goal = create(alice, THREE_STEPS)
            path = f"/api/v1/goals/{goal['id']}"
            assert bob.get(path).status_code == 403
            assert bob.get(f"{path}/events").status_code == 403
            assert bob.delete(path).status_code == 403
            assert goal["id"] not in [g["id"] for g in bob.get("/api/v1/goals").json()["data"]]
            assert root.get(path).status_code == 200
            assert goal["id"] in [
                g["id"] for g in root.get("/api/v1/goals", params={"limit": 500}).json()["data"]
            ]


class TestEvents:
    """SSE through a real server: in order, resumable, and closed for good at the end."""

    def test_stream_to_terminal(self, server: Server) -> None:
        """A stream carries every event once, ids 1, 2, 3 … in order, ending with completion."""
        with server.client(ALICE) as alice:
            goal = create(alice, THREE_STEPS, model="scripted/0.1")
            with alice.stream("GET", f"/api/v1/goals/{goal['id']}/events") as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                assert response.headers["cache-control"] == "no-cache"
                assert response.headers["x-accel-buffering"] == "no"
                events = list(sse(response))
        assert ids(events) == list(range(1, len(events) + 1))
        types = [e["event"] for e in events]
        assert types[0] == "goal.created" and types[-1] == "goal.completed"
        assert types.count("goal.step_completed") == 3
        for event in events:
            assert event["data"]["id"] == int(event["id"])
            assert event["data"]["type"] == event["event"]
            assert event["data"]["goal_id"] == goal["id"]
            assert event["data"]["workflow_id"] == goal["workflow_id"]

    def test_reconnect_misses_and_repeats_nothing(self, server: Server) -> None:
        """Reconnecting with Last-Event-ID mid-stream continues right after it; 204 at the end."""
        with server.client(ALICE) as alice:
            goal = create(alice, SIX_STEPS, model="scripted/0.1")
            first = stream(alice, goal["id"], stop_after="goal.step_started")
            assert first[-1]["event"] == "goal.step_started"
            second = stream(alice, goal["id"], last=int(first[-1]["id"]))
            assert second[-1]["event"] == "goal.completed"
            assert ids(first + second) == list(range(1, len(first) + len(second) + 1))

            # What the two connections saw is exactly the stored log.
            everything = stream(alice, goal["id"])
            assert [e["data"] for e in everything] == [e["data"] for e in first + second]

            # After the terminal event: 204, which stops a browser's EventSource.
            after = alice.get(
                f"/api/v1/goals/{goal['id']}/events",
                headers={"Last-Event-ID": second[-1]["id"]},
            )
            assert after.status_code == 204
            assert after.content == b""


class TestGeneratedToken:
    """Without --tokens, one admin token is generated, printed once, and loopback is enforced."""

    def test_token_printed_once_and_works(self, tmp_path: Path) -> None:
        """The token is on stderr once; it is an admin's; no other token gets in."""
        server = Server(tmp_path, "--storage", f"sqlite:///{tmp_path / 'g.db'}").start()
        try:
            match = re.search(r"goalkit serve: admin token \(shown once\): (\S+)", server.stderr)
            assert match, server.stderr
            token = match.group(1)
            with server.client(token) as admin:
                goal = create(admin, THREE_STEPS)
                assert goal["owner"] == "admin"
                assert admin.get("/api/v1/goals").status_code == 200
            with server.client("not-the-token") as other:
                assert other.get("/api/v1/goals").status_code == 401
        finally:
            code, _ = server.stop()
        assert code == 0
        assert server.output.count(token) == 1

    @pytest.mark.parametrize("host", ["0.0.0.0", "::", "example.com"])
    def test_public_host_needs_tokens(self, tmp_path: Path, host: str) -> None:
        """A non-loopback --host without --tokens exits 2 with a clear message."""
        done = subprocess.run(
            [sys.executable, "-m", "goalkit", "serve", "--host", host, "--port", "1"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2
        assert "needs --tokens FILE" in done.stderr
        assert "admin token" not in done.stderr  # nothing generated, nothing shown

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--storage", "bogus://x"], "no storage plugin serves the URL 'bogus://x'"),
            (["-p", "no_such_goalkit_plugin"], "cannot import plugin module"),
            (["--port", "0"], "--port: must be from 1 to 65535"),
            (["--max-streams", "-1"], "--max-streams: must be a whole number, 0 for no cap"),
            (["--max-active-goals", "x"], "--max-active-goals: must be a whole number"),
        ],
    )
    def test_bad_arguments_exit_2(self, tmp_path: Path, args: list[str], message: str) -> None:
        """A bad storage URL, plugin or port exits 2 before any token is generated or shown."""
        done = subprocess.run(
            [sys.executable, "-m", "goalkit", "serve", "--port", "1", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2
        assert message in done.stderr
        assert "admin token" not in done.stderr

    def test_port_in_use_exits_1(self, tmp_path: Path, tokens_file: Path) -> None:
        """A port another socket holds: exit 1 with a message, no traceback."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            args = ["--port", str(port), *server_args(tmp_path, tokens_file)]
            done = subprocess.run(
                [sys.executable, "-m", "goalkit", "serve", *args],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=30,
            )
        assert done.returncode == 1, done.stderr
        assert "the server did not start" in done.stderr
        assert "Traceback" not in done.stderr

    def test_bad_tokens_file_exits_2(self, tmp_path: Path) -> None:
        """A tokens file that breaks a rule exits 2 naming the entry, not the token."""
        path = tmp_path / "tokens.toml"
        path.write_text('[tokens]\n"sekrit-value" = { admin = true }\n', encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "-m", "goalkit", "serve", "--tokens", str(path), "--port", "1"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2
        assert "line 2, entry 1 of [tokens]: missing 'user'" in done.stderr
        assert "sekrit-value" not in done.stderr


class TestLimits:
    """--max-active-goals and --max-streams set the per-user caps: past them, 429."""

    def test_caps_from_the_command_line(self, tmp_path: Path, tokens_file: Path) -> None:
        args = [
            *server_args(tmp_path, tokens_file),
            "--max-active-goals",
            "1",
            "--max-streams",
            "1",
        ]
        server = Server(tmp_path, *args).start()
        try:
            with server.client(ALICE) as alice, server.client(BOB) as bob:
                goal = create(alice, SIX_STEPS, model="scripted/5")
                refused = alice.post("/api/v1/goals", json={"description": "one more"})
                assert refused.status_code == 429, refused.text
                assert refused.headers["Retry-After"] == "10"
                assert refused.json()["error"]["code"] == "limit_exceeded"
                create(bob, SIX_STEPS, model="scripted/5")  # bob has a cap of his own
                path = f"/api/v1/goals/{goal['id']}/events"
                with alice.stream("GET", path) as first:
                    assert first.status_code == 200
                    second = alice.get(path)
                    assert second.status_code == 429, second.text
                    assert second.headers["Retry-After"] == "3"
        finally:
            code, _ = server.stop()
        assert code == 0, server.stderr


class TestShutdown:
    """SIGTERM and Ctrl-C stop the server cleanly; running goals resume on the next start."""

    @pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
    def test_signal_exits_0(self, tmp_path: Path, tokens_file: Path, sig: int) -> None:
        """An idle server stops within a few seconds with exit status 0."""
        server = Server(tmp_path, *server_args(tmp_path, tokens_file)).start()
        code, took = server.stop(sig)
        assert code == 0, server.stderr
        assert took < 5
        assert "Traceback" not in server.stderr

    def test_running_goal_resumes_after_restart(self, tmp_path: Path, tokens_file: Path) -> None:
        """A goal running at SIGTERM stays active and finishes after the restart.

        Completed steps are not run again, and a client reconnecting with its last event id
        sees the rest of the events, none missing and none twice.
        """
        server = Server(tmp_path, *server_args(tmp_path, tokens_file))
        server.start()
        try:
            with server.client(ALICE) as alice:
                goal = create(alice, SIX_STEPS, model="scripted/0.3")
                before = stream(alice, goal["id"], stop_after="goal.step_completed")
            code, took = server.stop(signal.SIGTERM)
            assert code == 0, server.stderr
            assert took < 5

            server.start()
            with server.client(ALICE) as alice:
                state = alice.get(f"/api/v1/goals/{goal['id']}").json()["data"]
                assert state["status"] == "active", state
                assert 1 <= state["steps_completed"] < 6
                after = stream(alice, goal["id"], last=int(before[-1]["id"]))
                final = alice.get(f"/api/v1/goals/{goal['id']}").json()["data"]
        finally:
            server.kill()
        events = before + after
        assert ids(events) == list(range(1, len(events) + 1))
        assert events[-1]["event"] == "goal.completed"
        assert final["status"] == "completed" and final["steps_completed"] == 6
        started = [e["data"]["data"]["step"] for e in events if e["event"] == "goal.step_started"]
        assert started.count(1) == 1  # step 1 had completed: it did not run again

    def test_open_stream_ends_cleanly_at_shutdown(self, tmp_path: Path, tokens_file: Path) -> None:
        """With an SSE client connected, SIGTERM ends the stream cleanly and exits 0 at once.

        The stream gets its final empty chunk (a complete response, not a cut connection),
        so the client reads it to its end without an error and reconnects from its last id.
        """
        server = Server(tmp_path, *server_args(tmp_path, tokens_file)).start()
        try:
            with server.client(ALICE) as alice:
                goal = create(alice, SIX_STEPS, model="scripted/5")
                with alice.stream("GET", f"/api/v1/goals/{goal['id']}/events") as response:
                    events = sse(response)
                    assert next(events)["event"] == "goal.created"
                    server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
                    rest = list(events)  # raises if the response was cut, not ended
                code = server.proc.wait(timeout=SHUTDOWN_TIMEOUT + 10)  # type: ignore[union-attr]
        finally:
            server.kill()
        assert code == 0, server.stderr
        assert all(event["event"] != "goal.completed" for event in rest)
        # Ended by the drain, not cut when the grace period ran out.
        assert "returned without completing response" not in server.stderr, server.stderr
        assert "Exception in ASGI application" not in server.stderr, server.stderr
        assert "timeout graceful shutdown exceeded" not in server.stderr, server.stderr


class TestLiveOutput:
    """``goalkit serve --live-output``: streamed text on the event stream, never replayed."""

    def test_deltas_have_no_id_and_are_not_replayed(
        self, tmp_path: Path, tokens_file: Path
    ) -> None:
        server = Server(tmp_path, *server_args(tmp_path, tokens_file), "--live-output").start()
        try:
            with server.client(ALICE) as alice:
                goal = create(alice, THREE_STEPS, model="scripted/0.3")
                live = stream(alice, goal["id"])
                replay = stream(alice, goal["id"], last=0)
                done = alice.get(f"/api/v1/goals/{goal['id']}").json()["data"]
        finally:
            code, _ = server.stop()
        assert code == 0, server.stderr
        deltas = [e for e in live if e["event"] == "goal.step_delta"]
        assert deltas and all("id" not in e and e["data"]["id"] == 0 for e in deltas)
        texts = {
            step["index"]: "".join(
                e["data"]["data"]["text"]
                for e in deltas
                if e["data"]["data"]["step"] == step["index"]
            )
            for step in done["steps"]
        }
        # A step that streamed before the connection was open shows only what came after
        # (nothing is replayed); the last one streams a second after creation: all of it.
        assert all(done["steps"][i - 1]["result"].endswith(t) for i, t in texts.items())
        assert texts[3] == done["steps"][2]["result"]
        stored = [e for e in live if "id" in e]
        assert ids(stored) == list(range(1, len(stored) + 1))
        assert replay == stored
        assert done["usage"]["total_tokens"] > 0

"""Security of the HTTP API through a real ``goalkit serve`` on 127.0.0.1 (one per module):
the auth matrix, users never seeing each other's goals, and oversized uploads."""

from __future__ import annotations

import base64
import random
import resource
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from test_serve import Server, auth, create, sse

USERS = [f"user{i}" for i in range(12)]
TOKENS = {
    "alice-token": ("alice", False),
    "bob-token": ("bob", False),
    "root-token": ("root", True),
    **{f"{user}-token": (user, False) for user in USERS},
}
CALLERS: dict[str, str | None] = {
    "no token": None,
    "bad token": "Bearer not-a-known-token",
    "wrong scheme": "Basic " + base64.b64encode(b"alice:alice-token").decode(),
    "other user": "Bearer bob-token",
    "owner": "Bearer alice-token",
    "admin": "Bearer root-token",
}
# Expected status per endpoint for the callers in CALLERS' order, on a goal alice owns.
MATRIX = {
    ("POST", "/api/v1/goals"): [401, 401, 401, 201, 201, 201],
    ("GET", "/api/v1/goals"): [401, 401, 401, 200, 200, 200],
    ("GET", "/api/v1/goals/{id}"): [401, 401, 401, 403, 200, 200],
    ("DELETE", "/api/v1/goals/{id}"): [401, 401, 401, 403, 200, 200],
    ("GET", "/api/v1/goals/{id}/events"): [401, 401, 401, 403, 200, 200],
    ("GET", "/api/v1/openapi.json"): [200, 200, 200, 200, 200, 200],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("security")
    lines = [
        f'"{token}" = {{ user = "{user}", admin = {str(admin).lower()} }}'
        for token, (user, admin) in TOKENS.items()
    ]
    tokens = workdir / "tokens.toml"
    tokens.write_text("[tokens]\n" + "\n".join(lines) + "\n", encoding="utf-8")
    tokens.chmod(0o600)
    db = workdir / "g.db"
    running = Server(
        workdir, "--storage", f"sqlite:///{db}", "--tokens", str(tokens), "--log-level", "info"
    ).start()
    yield running
    code, _ = running.stop()
    assert code == 0, running.stderr
    output = running.output
    for token in TOKENS:
        assert token not in output  # not in the access log, nor any error line


@pytest.fixture(scope="module")
def finished_goal(server: Server) -> str:
    """A goal of alice's that has completed (its event stream replays and ends)."""
    with server.client("alice-token") as alice:
        goal = create(alice, "Find sources. Read them.")
        with alice.stream("GET", f"/api/v1/goals/{goal['id']}/events") as response:
            assert [e["event"] for e in sse(response)][-1] == "goal.completed"
    return str(goal["id"])


class TestAuthMatrix:
    """Every endpoint × {no token, bad token, wrong scheme, other user, owner, admin}."""

    @pytest.mark.parametrize("caller", list(CALLERS))
    @pytest.mark.parametrize(("method", "path"), list(MATRIX))
    def test_status(
        self, server: Server, finished_goal: str, method: str, path: str, caller: str
    ) -> None:
        expected = MATRIX[method, path][list(CALLERS).index(caller)]
        goal = finished_goal
        if method == "DELETE":  # cancelling needs a goal that is still running
            with server.client("alice-token") as alice:
                goal = create(alice, "Wait. Then finish.", model="scripted/30")["id"]
        authorization = CALLERS[caller]
        headers = {} if authorization is None else {"Authorization": authorization}
        body = {"json": {"description": "x"}} if method == "POST" else {}
        with server.client() as http:
            response = http.request(method, path.format(id=goal), headers=headers, **body)
        assert response.status_code == expected, response.text
        if expected == 401:
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"]["code"] == "not_authenticated"
        if expected == 403:
            assert response.json()["error"]["code"] == "forbidden"
        if caller == "other user" and (method, path) == ("GET", "/api/v1/goals"):
            assert goal not in [g["id"] for g in response.json()["data"]]
        assert "-token" not in response.text


def _check_pairs(server: Server, pairs: int, seed: int) -> None:
    """For random pairs of users (a, b): nothing b lists or streams is a's."""
    rng = random.Random(seed)
    owned: dict[str, list[str]] = {}
    clients = {user: server.client(f"{user}-token") for user in USERS}
    try:
        for user, http in clients.items():
            owned[user] = [
                create(http, f"Goal {i} of {user}.", tags=[user, "shared"])["id"] for i in range(2)
            ]
        for _ in range(pairs):
            a, b = rng.sample(USERS, 2)
            http = clients[b]
            params = {
                "status": rng.choice([None, "active", "completed"]),
                "tag": rng.choice([None, "shared", a, b]),
                "owner": rng.choice([None, b]),
                "limit": rng.choice([1, 50, 500]),
            }
            listed = http.get("/api/v1/goals", params={k: v for k, v in params.items() if v})
            assert listed.status_code == 200, listed.text
            assert {g["owner"] for g in listed.json()["data"]} <= {b}
            assert not set(owned[a]) & {g["id"] for g in listed.json()["data"]}
            assert http.get("/api/v1/goals", params={"owner": a}).status_code == 403
            theirs = rng.choice(owned[a])
            assert http.get(f"/api/v1/goals/{theirs}/events").status_code == 403
            assert http.get(f"/api/v1/goals/{theirs}").status_code == 403
            mine = rng.choice(owned[b])
            with http.stream("GET", f"/api/v1/goals/{mine}/events") as response:
                assert response.status_code == 200
                assert {e["data"]["goal_id"] for e in sse(response)} == {mine}
    finally:
        for http in clients.values():
            http.close()


class TestIsolation:
    """Across random pairs of users, no list or stream shows another user's goal."""

    def test_100_pairs(self, server: Server) -> None:
        _check_pairs(server, 100, seed=100)

    @pytest.mark.slow
    def test_1000_pairs(self, server: Server) -> None:
        _check_pairs(server, 1000, seed=1000)


class TestTokensInUrls:
    """A token a client puts in the URL is refused and kept out of the access log."""

    def test_query_tokens_are_redacted_in_the_access_log(self, server: Server) -> None:
        urls = [
            "/api/v1/goals?access_token=user1-token",
            "/api/v1/goals?user2-token",
            "/api/v1/goals?limit=5&token=user3%2Dtoken",
            "/api/v1/goals?status=active&tag=qa",
        ]
        with server.client() as anonymous:
            for url in urls:
                assert anonymous.get(url).status_code == 401
        for _ in range(100):  # the access log is written after each answer
            if "status=active&tag=qa" in server.output:
                break
            time.sleep(0.05)
        log = server.output
        assert "GET /api/v1/goals?access_token=<redacted> HTTP/1.1" in log
        assert "GET /api/v1/goals?<redacted> HTTP/1.1" in log
        assert "GET /api/v1/goals?limit=5&token=<redacted> HTTP/1.1" in log
        assert "GET /api/v1/goals?status=active&tag=qa HTTP/1.1" in log  # the API's own
        for token in ("user1-token", "user2-token", "user3-token", "user3%2Dtoken"):
            assert token not in log


class TestOversizedBodies:
    """Bodies over the limit are refused with 413, and the server stops reading them."""

    def test_one_mebibyte(self, server: Server) -> None:
        with server.client("alice-token") as alice:
            response = alice.post(
                "/api/v1/goals",
                content=b'{"description": "' + b"x" * (1024 * 1024) + b'"}',
                headers={"Content-Type": "application/json"},
            )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"

    def test_chunked_100_mb_is_not_read(self, server: Server) -> None:
        """Of 100 chunks of 1 MiB offered without a Content-Length, few are ever sent.

        The server answers after the first 64 KiB and closes the connection; the client's
        writes then fail (or block) long before the end. Without ``Connection: close``
        uvicorn would read and discard all 100 MiB to reuse the connection.
        """
        offered = 0

        def chunks() -> Iterator[bytes]:
            nonlocal offered
            for _ in range(100):
                offered += 1
                yield b" " * (1024 * 1024)

        headers = {**auth("alice-token"), "Content-Type": "application/json"}
        with httpx.Client(base_url=server.url, timeout=httpx.Timeout(30)) as http:
            response = http.post("/api/v1/goals", content=chunks(), headers=headers)
        assert response.status_code == 413
        assert response.json()["error"]["message"] == "the request body exceeds 65536 bytes"
        assert offered < 50
        with server.client("alice-token") as alice:  # and the server serves on
            assert alice.get("/api/v1/goals", params={"limit": 1}).status_code == 200


class TestConnectionLimit:
    """``goalkit serve`` refuses connections past its limit with 503, not a crash."""

    @pytest.mark.skipif(
        resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1200, reason="needs 1,200 open files"
    )
    def test_past_1000_connections_is_a_503(self, server: Server) -> None:
        idle: list[socket.socket] = []
        try:
            for _ in range(1000):
                idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
            with server.client("alice-token") as alice:
                response = alice.get("/api/v1/goals", params={"limit": 1})
            assert response.status_code == 503
        finally:
            for sock in idle:
                sock.close()
        # Once the server has seen those connections close, it answers again.
        with server.client("alice-token") as alice:
            for _ in range(100):
                status = alice.get("/api/v1/goals", params={"limit": 1}).status_code
                if status != 503:
                    break
                time.sleep(0.05)
        assert status == 200

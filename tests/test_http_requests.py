"""Request handling of the HTTP API against hostile or odd input, in process (httpx's ASGI
transport, or raw ASGI calls where the transport cannot say it): the order of checks, the
authenticate hook's failures, tokens kept out of logs, body deadlines, ids, headers."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, quote_plus

import anyio
import httpx
import pytest
from asgi_helpers import ALICE, ROOT, HeldProvider, app_for, client, drive, make_manager

import goalkit
import goalkit.asgi
from goalkit import Forbidden, GoalManager, NotAuthenticated, Principal
from goalkit.asgi.app import scrub

pytestmark = pytest.mark.anyio

JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def manager() -> AsyncIterator[GoalManager]:
    async with make_manager(HeldProvider()) as manager:
        yield manager


@pytest.fixture
async def http(manager: GoalManager) -> AsyncIterator[httpx.AsyncClient]:
    async with client(app_for(manager)) as http:
        yield http


async def goal_id(http: httpx.AsyncClient) -> str:
    response = await http.post("/api/v1/goals", json={"description": "x"}, headers=ALICE)
    assert response.status_code == 201, response.text
    return str(response.json()["data"]["id"])


def refused(response: httpx.Response, status: int, code: str, field: str | None = None) -> str:
    """Check an error envelope (a 4xx, never a 5xx) and return its message."""
    assert response.status_code == status, response.text
    assert 400 <= status < 500
    body = response.json()
    assert body["ok"] is False and body["error"]["code"] == code
    message: str = body["error"]["message"]
    assert message
    if field is not None:
        assert body["error"]["field"] == field
        assert message.startswith(f"{field}: ")
    return message


class TestAuthenticationComesFirst:
    """An anonymous or unknown caller gets a 401 before any parameter is looked at."""

    @pytest.mark.parametrize(
        ("method", "url", "headers"),
        [
            ("GET", "/api/v1/goals?limit=0", {}),
            ("GET", "/api/v1/goals?stauts=active", {}),
            ("GET", "/api/v1/goals?limit=1&limit=2", {}),
            ("GET", "/api/v1/goals?tag=%ff", {}),
            ("GET", "/api/v1/goals/goal-x/events?after=-1", {}),
            ("GET", "/api/v1/goals/goal-x/events", {"Last-Event-ID": "x"}),
            ("POST", "/api/v1/goals", {"Idempotency-Key": " "}),
        ],
    )
    @pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic YWxpY2U6eA=="])
    async def test_bad_parameters_without_credentials_are_a_401(
        self,
        http: httpx.AsyncClient,
        method: str,
        url: str,
        headers: dict[str, str],
        authorization: str | None,
    ) -> None:
        """Query and header checks wait until the caller is known."""
        if authorization is not None:
            headers = headers | {"Authorization": authorization}
        response = await http.request(method, url, headers=headers, json={"description": "x"})
        refused(response, 401, "not_authenticated")
        assert response.headers["www-authenticate"] == "Bearer"

    async def test_the_same_request_with_credentials_is_a_400(
        self, http: httpx.AsyncClient
    ) -> None:
        """The check itself still runs for a known caller."""
        response = await http.get("/api/v1/goals?limit=0", headers=ALICE)
        refused(response, 400, "invalid_request", "limit")

    async def test_the_public_document_takes_no_query(self, http: httpx.AsyncClient) -> None:
        """The OpenAPI document needs no token; an unknown query parameter is still a 400."""
        refused(await http.get("/api/v1/openapi.json?x=1"), 400, "invalid_request", "x")
        assert (await http.get("/api/v1/openapi.json")).status_code == 200


class TokenAware:
    """A `goalkit_authenticate` plugin that fails the way careless hooks do: quoting tokens."""

    def __init__(self, failure: type[Exception]) -> None:
        self.failure = failure

    @goalkit.hookimpl
    def goalkit_authenticate(self, token: str) -> Principal | None:
        if token.startswith("ok"):
            return Principal("alice")
        encoded = f"{quote(token, safe='')} {quote_plus(token).lower()}"
        raise self.failure(f"token {token} ({encoded}) was refused by the directory")


SECRET = "s3cr3t+t0k/en=="


class TestAuthenticateHookFailures:
    """A hook that raises never has its message, or the token, reach the answer or the log."""

    async def answer(
        self, failure: type[Exception], caplog: pytest.LogCaptureFixture
    ) -> httpx.Response:
        manager = GoalManager("memory://", plugins=[TokenAware(failure)], entry_points=False)
        async with manager:
            with caplog.at_level(logging.DEBUG):
                async with client(app_for(manager)) as http:
                    response = await http.get(
                        "/api/v1/goals", headers={"Authorization": f"Bearer {SECRET}"}
                    )
        for form in (SECRET, quote(SECRET, safe=""), quote_plus(SECRET), "s3cr3t"):
            assert form not in response.text
            assert form not in caplog.text
            assert form.lower() not in caplog.text.lower()
        return response

    async def test_not_authenticated_is_a_401_with_fixed_text(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The hook's message is logged scrubbed; the answer is the unknown-token answer."""
        response = await self.answer(NotAuthenticated, caplog)
        assert refused(response, 401, "not_authenticated") == "unknown or revoked token"
        assert response.headers["www-authenticate"] == "Bearer"
        assert "token <token> (<token> <token>) was refused" in caplog.text

    async def test_forbidden_is_a_403(self, caplog: pytest.LogCaptureFixture) -> None:
        """A hook raising goalkit's Forbidden refuses the caller with 403, not a 500."""
        response = await self.answer(Forbidden, caplog)
        assert refused(response, 403, "forbidden") == "this token may not use this API"

    async def test_other_errors_are_a_generic_500(self, caplog: pytest.LogCaptureFixture) -> None:
        """Anything else is the hook's failure: logged with its traceback, scrubbed."""
        response = await self.answer(RuntimeError, caplog)
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "internal_error"
        assert "RuntimeError: token <token> (<token> <token>)" in caplog.text


class TestScrub:
    """`scrub` finds a token as sent and in every percent-encoded spelling of it."""

    @pytest.mark.parametrize(
        "form",
        [
            SECRET,
            quote(SECRET, safe=""),
            quote(SECRET, safe="").lower(),
            quote(SECRET),  # "/" left as is
            quote_plus(SECRET),
            SECRET.replace("+", " "),  # a form decoder's reading of "+"
            "".join(f"%{ord(c):02X}" for c in SECRET),  # every character escaped
        ],
    )
    def test_every_spelling_is_replaced(self, form: str) -> None:
        assert scrub(f"before {form} after", SECRET) == "before <token> after"

    def test_other_text_is_kept(self) -> None:
        assert scrub("s3cr3t t0ken", SECRET) == "s3cr3t t0ken"


async def call(
    app: Any,
    body: list[bytes],
    *,
    http_version: str = "1.1",
    hang: bool = False,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[int, dict[bytes, bytes], dict[str, Any]]:
    """POST `body` in chunks straight to the ASGI app; with `hang`, the last chunk says more
    is coming and then nothing comes. Return the status, headers and JSON answer."""
    chunks = list(body)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": hang or bool(chunks)}
        await anyio.sleep_forever()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": http_version,
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/goals",
        "raw_path": b"/api/v1/goals",
        "root_path": "",
        "query_string": b"",
        "headers": headers
        if headers is not None
        else [(b"authorization", b"Bearer alice-token"), (b"content-type", b"application/json")],
    }
    with anyio.fail_after(10):
        await app(scope, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"]), json.loads(sent[1]["body"])


class TestBodyDeadline:
    """A body that does not arrive in time is a 408, and the request is over."""

    async def test_a_stalled_body_is_a_408(self, manager: GoalManager) -> None:
        """Half a body, then silence: 408 request_timeout, the connection to be closed."""
        app = app_for(manager, body_timeout=0.2)
        status, headers, answer = await call(app, [b'{"descr'], hang=True)
        assert status == 408
        assert answer["error"]["code"] == "request_timeout"
        assert (
            "did not arrive within 0.2 seconds; 7 bytes came in time" in answer["error"]["message"]
        )
        assert headers[b"connection"] == b"close"
        assert (await manager.list()).total == 0

    async def test_a_body_in_time_is_read(self, manager: GoalManager) -> None:
        """The deadline bounds the whole body, not the request: a prompt body goes through."""
        app = app_for(manager, body_timeout=5)
        status, _, answer = await call(app, [b'{"descr', b'iption": "x"}'])
        assert status == 201, answer

    @pytest.mark.parametrize("value", [0, -1, True, float("nan")])
    def test_the_deadline_must_be_positive(self, value: float) -> None:
        with pytest.raises(ValueError, match="body_timeout must be a positive number"):
            goalkit.asgi.create_app(make_manager(), body_timeout=value)


class TestConnectionClose:
    """A body refused unread asks an HTTP/1.x server to close; HTTP/2 forbids the header."""

    @pytest.mark.parametrize(("version", "close"), [("1.1", True), ("1.0", True), ("2", False)])
    async def test_413(self, manager: GoalManager, version: str, close: bool) -> None:
        status, headers, _ = await call(
            app_for(manager), [b" " * 70_000, b"{}"], http_version=version
        )
        assert status == 413
        assert (headers.get(b"connection") == b"close") is close

    async def test_other_answers_leave_the_connection_alone(self, manager: GoalManager) -> None:
        status, headers, _ = await call(app_for(manager), [b"{}"])
        assert status == 400
        assert b"connection" not in headers


class TestGoalIds:
    """Path ids are at most 64 characters; longer ones, and `..`, are a 404 without echo."""

    @pytest.mark.parametrize("suffix", ["", "/events"])
    @pytest.mark.parametrize("method", ["GET", "DELETE"])
    @pytest.mark.parametrize("length", [65, 10_000])
    async def test_long_ids_are_a_404_not_echoed(
        self, http: httpx.AsyncClient, method: str, suffix: str, length: int
    ) -> None:
        if method == "DELETE" and suffix:
            return  # not a route: a 405 (covered elsewhere)
        huge = "g" * length
        response = await http.request(method, f"/api/v1/goals/{huge}{suffix}", headers=ALICE)
        message = refused(response, 404, "not_found")
        assert "at most 64 characters" in message
        assert "g" * 65 not in response.text and len(response.content) < 200

    async def test_an_id_of_64_characters_is_looked_up(self, http: httpx.AsyncClient) -> None:
        response = await http.get("/api/v1/goals/" + "g" * 64, headers=ALICE)
        assert "not found" in refused(response, 404, "not_found")

    @pytest.mark.parametrize(
        "path",
        ["/api/v1/goals/..", "/api/v1/goals/../../../etc/passwd", "/api/v1/goals/../goals"],
    )
    async def test_dot_segments_find_nothing(self, manager: GoalManager, path: str) -> None:
        """``..`` is an id like any other (no goal has it) or a path that does not exist."""
        await manager.create("x", owner="alice")
        sent, _ = await drive(
            app_for(manager), "GET", path, headers=[(b"authorization", b"Bearer alice-token")]
        )
        assert sent[0]["status"] == 404
        assert json.loads(sent[1]["body"])["error"]["code"] == "not_found"

    async def test_encoded_dot_segments(self, http: httpx.AsyncClient) -> None:
        response = await http.get("/api/v1/goals/%2E%2E%2F%2E%2E", headers=ALICE)
        refused(response, 404, "not_found")

    async def test_a_long_unknown_path_is_not_echoed_whole(self, http: httpx.AsyncClient) -> None:
        response = await http.get("/x" * 5_000, headers=ALICE)
        refused(response, 404, "not_found")
        assert len(response.content) < 300


class TestHeaders:
    """Single-valued headers sent twice are refused by name, not joined."""

    @pytest.mark.parametrize("name", ["Idempotency-Key", "Content-Type"])
    async def test_repeated_create_headers(self, http: httpx.AsyncClient, name: str) -> None:
        value = "application/json" if name == "Content-Type" else "k1"
        headers = [*ALICE.items(), ("Content-Type", "application/json"), (name, value)]
        if name != "Content-Type":
            headers.append((name, "k2"))
        response = await http.post(
            "/api/v1/goals", content=b'{"description": "x"}', headers=headers
        )
        refused(response, 400, "invalid_request", name)
        assert "given more than once" in response.json()["error"]["message"]

    async def test_repeated_last_event_id(self, http: httpx.AsyncClient) -> None:
        goal = await goal_id(http)
        headers = [*ALICE.items(), ("Last-Event-ID", "1"), ("Last-Event-ID", "2")]
        response = await http.get(f"/api/v1/goals/{goal}/events", headers=headers)
        refused(response, 400, "invalid_request", "Last-Event-ID")

    @pytest.mark.parametrize(
        ("root", "encoded"),
        [
            ("/goalkit", "/goalkit"),
            ("/目标 kit", "/%E7%9B%AE%E6%A0%87%20kit"),
            ("/a%b", "/a%25b"),
        ],
    )
    async def test_location_is_percent_encoded(
        self, manager: GoalManager, root: str, encoded: str
    ) -> None:
        """The mount prefix may hold any character; Location and the document's server URL
        are ASCII URLs."""
        app = app_for(manager)
        headers = [
            (b"authorization", b"Bearer alice-token"),
            (b"content-type", b"application/json"),
        ]
        sent, _ = await drive(
            app, "POST", "/api/v1/goals", headers=headers, chunks=[b'{"description": "x"}'],
            root_path=root,
        )  # fmt: skip
        assert sent[0]["status"] == 201
        goal = json.loads(sent[1]["body"])["data"]["id"]
        assert dict(sent[0]["headers"])[b"location"] == f"{encoded}/api/v1/goals/{goal}".encode()
        sent, _ = await drive(app, "GET", "/api/v1/openapi.json", root_path=root)
        assert json.loads(sent[1]["body"])["servers"] == [{"url": encoded}]


class TestHostileInput:
    """Each hostile request is a 4xx with a clear message, never a 5xx."""

    async def test_a_body_of_one_mebibyte(self, http: httpx.AsyncClient) -> None:
        body = json.dumps({"description": "x" * (1024 * 1024)}).encode()
        response = await http.post("/api/v1/goals", content=body, headers=ALICE | JSON)
        assert "exceeds 65536 bytes" in refused(response, 413, "payload_too_large")

    async def test_json_nested_10000_deep(self, http: httpx.AsyncClient) -> None:
        body = b'{"description": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
        response = await http.post("/api/v1/goals", content=body, headers=ALICE | JSON)
        message = refused(response, 400, "invalid_request")
        assert "nested too deeply" in message or "must be a string" in message

    @pytest.mark.parametrize(
        "body", [b'{"description": "\xff"}', b"\xc3\x28", b'{"a":"\xed\xa0\x80"}']
    )
    async def test_invalid_utf8(self, http: httpx.AsyncClient, body: bytes) -> None:
        response = await http.post("/api/v1/goals", content=body, headers=ALICE | JSON)
        assert "not valid UTF-8" in refused(response, 400, "invalid_request")

    @pytest.mark.parametrize(
        "value",
        [
            b"-1",
            b"1" * 16,
            b"9" * 5_000,
            b"abc",
            b" ",  # (an empty one counts as none: test_asgi's test_an_empty_last_event_id_is_no_id)
            b"+5",
            b"5.0",
            b"0x10",
            b"1e3",
            "١٢".encode(),  # Arabic-Indic digits: int() would take them
            "１２".encode(),  # fullwidth digits
            b"\xff",
        ],
    )
    async def test_odd_last_event_ids(self, http: httpx.AsyncClient, value: bytes) -> None:
        goal = await goal_id(http)
        response = await http.get(
            f"/api/v1/goals/{goal}/events", headers=[*ALICE.items(), (b"Last-Event-ID", value)]
        )
        message = refused(response, 400, "invalid_request", "Last-Event-ID")
        assert "non-negative integer of at most 15 digits" in message

    @pytest.mark.parametrize(
        ("query", "field"),
        [
            (f"limit={10**9}", "limit"),
            ("limit=" + "9" * 5_000, "limit"),  # int() refuses strings over 4,300 digits
            ("offset=" + "9" * 5_000, "offset"),
            ("limit=%EF%BC%95", "limit"),  # a fullwidth 5
            ("tag=" + "t" * 65, "tag"),
            ("owner=" + "o" * 201, "owner"),
        ],
    )
    async def test_odd_query_values(self, http: httpx.AsyncClient, query: str, field: str) -> None:
        response = await http.get(f"/api/v1/goals?{query}", headers=ROOT)
        assert "must be" in refused(response, 400, "invalid_request", field)
        assert len(response.content) < 300

    async def test_after_with_5000_digits(self, http: httpx.AsyncClient) -> None:
        goal = await goal_id(http)
        response = await http.get(f"/api/v1/goals/{goal}/events?after={'9' * 5_000}", headers=ALICE)
        refused(response, 400, "invalid_request", "after")

    @pytest.mark.parametrize("length", [b"9" * 5_000, b"-1", b"12 34", b"0x10"])
    async def test_odd_content_lengths(self, manager: GoalManager, length: bytes) -> None:
        headers = [
            (b"authorization", b"Bearer alice-token"),
            (b"content-type", b"application/json"),
            (b"content-length", length),
        ]
        status, _, answer = await call(app_for(manager), [b"{}"], headers=headers)
        assert status == 400
        assert answer["error"]["field"] == "Content-Length"

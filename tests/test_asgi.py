"""The HTTP API through httpx's ASGI transport (and, where timing matters, the raw ASGI calls)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_helpers import (
    ALICE,
    BOB,
    ROOT,
    HeldProvider,
    SlowSink,
    Users,
    app_for,
    client,
    drive,
    events_of,
    make_manager,
    parse_sse,
)

import goalkit.asgi
from goalkit import GoalManager, Principal
from goalkit.models import encode_cursor

pytestmark = pytest.mark.anyio

JSON_HEADERS = {"Content-Type": "application/json"}


@pytest.fixture
def provider() -> HeldProvider:
    return HeldProvider()


@pytest.fixture
async def manager(provider: HeldProvider) -> AsyncIterator[GoalManager]:
    async with make_manager(provider) as manager:
        yield manager


@pytest.fixture
def app(manager: GoalManager) -> goalkit.asgi.GoalkitApp:
    return app_for(manager)


@pytest.fixture
async def http(app: goalkit.asgi.GoalkitApp) -> AsyncIterator[httpx.AsyncClient]:
    async with client(app) as http:
        yield http


async def create(
    http: httpx.AsyncClient, headers: dict[str, str] = ALICE, **body: Any
) -> dict[str, Any]:
    body.setdefault("description", "Write unit tests")
    response = await http.post("/api/v1/goals", json=body, headers=headers)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def finished(http: httpx.AsyncClient, manager: GoalManager, **body: Any) -> dict[str, Any]:
    goal = await create(http, **body)
    await manager.wait(goal["id"], timeout=5)
    return goal


def assert_error(
    response: httpx.Response, status: int, code: str, field: str | None = None
) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["ok"] is False
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert "Traceback" not in response.text
    if field is not None:
        assert body["error"]["field"] == field
        assert field in body["error"]["message"]


class TestCreate:
    """POST /api/v1/goals creates a goal owned by the caller."""

    async def test_created_goal_shape(self, http: httpx.AsyncClient) -> None:
        response = await http.post(
            "/api/v1/goals",
            json={"description": "Write unit tests", "mode": "plan", "tags": ["qa"]},
            headers=ALICE,
        )
        assert response.status_code == 201
        body = response.json()
        assert body["ok"] is True
        goal = body["data"]
        assert goal["id"].startswith("goal-")
        assert goal["workflow_id"].startswith("wf-")
        assert goal["owner"] == "alice"
        assert goal["status"] == "active"
        assert goal["model"] == "scripted"
        assert goal["tags"] == ["qa"]
        assert isinstance(goal["created_at"], int)
        for key in ("steps_completed", "total_steps", "description", "steps"):
            assert key in goal
        assert response.headers["location"] == f"/api/v1/goals/{goal['id']}"

    @pytest.mark.parametrize(
        "field", ["owner", "status", "id", "workflow_id", "phase", "created_at", "steps"]
    )
    async def test_server_owned_fields_are_refused(
        self, http: httpx.AsyncClient, field: str
    ) -> None:
        body = {"description": "x", field: "mallory"}
        response = await http.post("/api/v1/goals", json=body, headers=ALICE)
        assert_error(response, 400, "invalid_request", field)

    async def test_unknown_field_is_refused(self, http: httpx.AsyncClient) -> None:
        response = await http.post(
            "/api/v1/goals", json={"description": "x", "colour": "red"}, headers=ALICE
        )
        assert_error(response, 400, "invalid_request", "colour")

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({}, "description"),
            ({"description": ""}, "description"),
            ({"description": "   "}, "description"),
            ({"description": 5}, "description"),
            ({"description": "x" * 10_001}, "description"),
            ({"description": "\ud800"}, "description"),
            ({"description": "x", "model": ""}, "model"),
            ({"description": "x", "model": "no-such-model"}, "model"),
            ({"description": "x", "mode": "chaos"}, "mode"),
            ({"description": "x", "max_steps": 0}, "max_steps"),
            ({"description": "x", "max_steps": 101}, "max_steps"),
            ({"description": "x", "max_steps": "5"}, "max_steps"),
            ({"description": "x", "max_steps": True}, "max_steps"),
            ({"description": "x", "max_steps": 2.5}, "max_steps"),
            ({"description": "x", "max_retries": 11}, "max_retries"),
            ({"description": "x", "max_retries": None}, "max_retries"),
            ({"description": "x", "tags": "qa"}, "tags"),
            ({"description": "x", "tags": {"qa": 1}}, "tags"),
            ({"description": "x", "tags": [1]}, "tags"),
            ({"description": "x", "tags": [""]}, "tags"),
            ({"description": "x", "tags": ["x" * 65]}, "tags"),
            ({"description": "x", "tags": [f"t{i}" for i in range(21)]}, "tags"),
        ],
    )
    async def test_bad_fields_are_named(
        self, http: httpx.AsyncClient, body: dict[str, Any], field: str
    ) -> None:
        # json.dumps escapes a lone surrogate, which httpx's json= cannot encode.
        content = json.dumps(body).encode()
        response = await http.post("/api/v1/goals", content=content, headers=ALICE | JSON_HEADERS)
        assert_error(response, 400, "invalid_request", field)

    async def test_an_integral_float_is_an_integer(self, http: httpx.AsyncClient) -> None:
        goal = await create(http, max_steps=3.0)
        assert goal["max_steps"] == 3

    @pytest.mark.parametrize(
        "content",
        [
            b"{not json",
            b"",
            b'{"description": NaN}',
            b'{"description": "a", "description": "b"}',
            b"\xff\xfe{}",
            b'{"description": "caf\xe9"}',
            b"[" * 10_000 + b"]" * 10_000,
            b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        ],
    )
    async def test_bad_json_is_a_400(self, http: httpx.AsyncClient, content: bytes) -> None:
        response = await http.post("/api/v1/goals", content=content, headers=ALICE | JSON_HEADERS)
        assert_error(response, 400, "invalid_request")

    @pytest.mark.parametrize("content", [b"[]", b'"goal"', b"null", b"3"])
    async def test_body_must_be_an_object(self, http: httpx.AsyncClient, content: bytes) -> None:
        response = await http.post("/api/v1/goals", content=content, headers=ALICE | JSON_HEADERS)
        assert_error(response, 400, "invalid_request", "body")

    @pytest.mark.parametrize(
        "content_type",
        [
            None,
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/json; charset=latin-1",
        ],
    )
    async def test_non_json_body_is_a_415(
        self, http: httpx.AsyncClient, content_type: str | None
    ) -> None:
        headers = dict(ALICE)
        if content_type:
            headers["Content-Type"] = content_type
        response = await http.post(
            "/api/v1/goals", content=b'{"description": "x"}', headers=headers
        )
        assert_error(response, 415, "unsupported_media_type")

    @pytest.mark.parametrize(
        "content_type", ["application/json; charset=utf-8", 'Application/JSON;charset="UTF-8"']
    )
    async def test_json_with_utf8_charset_is_accepted(
        self, http: httpx.AsyncClient, content_type: str
    ) -> None:
        response = await http.post(
            "/api/v1/goals",
            content='{"description": "café"}'.encode(),
            headers=ALICE | {"Content-Type": content_type},
        )
        assert response.status_code == 201
        assert response.json()["data"]["description"] == "café"

    async def test_oversized_content_length_is_refused_unread(
        self, app: goalkit.asgi.GoalkitApp
    ) -> None:
        headers = [
            (b"authorization", b"Bearer alice-token"),
            (b"content-type", b"application/json"),
            (b"content-length", b"70000"),
        ]
        sent, read = await drive(
            app, "POST", "/api/v1/goals", headers=headers, chunks=[b"x" * 70_000]
        )
        assert sent[0]["status"] == 413
        assert read == 0
        assert json.loads(sent[1]["body"])["error"]["code"] == "payload_too_large"

    async def test_oversized_chunked_body_is_abandoned_early(
        self, app: goalkit.asgi.GoalkitApp
    ) -> None:
        headers = [
            (b"authorization", b"Bearer alice-token"),
            (b"content-type", b"application/json"),
        ]
        chunk = b" " * (1024 * 1024)
        sent, read = await drive(app, "POST", "/api/v1/goals", headers=headers, chunks=[chunk] * 64)
        assert sent[0]["status"] == 413
        assert read == 1  # of 64 MiB offered, one chunk was read

    async def test_body_at_the_limit_is_read(self, manager: GoalManager) -> None:
        app = app_for(manager, max_body=100)
        body = json.dumps({"description": "x" * 70}).encode()
        async with client(app) as http:
            ok = await http.post("/api/v1/goals", content=body, headers=ALICE | JSON_HEADERS)
            assert ok.status_code == 201
            too_big = await http.post(
                "/api/v1/goals",
                content=json.dumps({"description": "x" * 100}).encode(),
                headers=ALICE | JSON_HEADERS,
            )
            assert_error(too_big, 413, "payload_too_large")


class TestIdempotency:
    """An Idempotency-Key makes a repeated POST return the goal the first one created."""

    async def test_same_key_same_goal(self, http: httpx.AsyncClient) -> None:
        key = {"Idempotency-Key": "order-1"}
        first = await create(http, ALICE | key)
        second = await create(http, ALICE | key)
        assert first["id"] == second["id"]

    async def test_concurrent_requests_create_one_goal(
        self, http: httpx.AsyncClient, manager: GoalManager
    ) -> None:
        ids: list[str] = []

        async def post() -> None:
            ids.append((await create(http, ALICE | {"Idempotency-Key": "burst"}))["id"])

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(post)
        assert len(set(ids)) == 1
        assert (await manager.list(owner="alice")).total == 1

    async def test_same_key_other_body_is_a_409(self, http: httpx.AsyncClient) -> None:
        key = {"Idempotency-Key": "k"}
        await create(http, ALICE | key)
        response = await http.post(
            "/api/v1/goals", json={"description": "something else"}, headers=ALICE | key
        )
        assert_error(response, 409, "conflict")

    async def test_keys_belong_to_their_user(self, http: httpx.AsyncClient) -> None:
        key = {"Idempotency-Key": "shared"}
        mine = await create(http, ALICE | key)
        theirs = await create(http, BOB | key)
        assert mine["id"] != theirs["id"]
        assert theirs["owner"] == "bob"

    @pytest.mark.parametrize("key", ["", " padded ", "x" * 256, "tab\there"])
    async def test_bad_key_is_a_400(self, http: httpx.AsyncClient, key: str) -> None:
        response = await http.post(
            "/api/v1/goals", json={"description": "x"}, headers=ALICE | {"Idempotency-Key": key}
        )
        assert_error(response, 400, "invalid_request", "Idempotency-Key")


class TestList:
    """GET /api/v1/goals lists goals newest first, with meta; non-admins see their own."""

    async def test_users_see_their_own_admins_all(self, http: httpx.AsyncClient) -> None:
        a = await create(http, ALICE)
        b = await create(http, BOB)
        mine = (await http.get("/api/v1/goals", headers=ALICE)).json()
        assert [g["id"] for g in mine["data"]] == [a["id"]]
        assert mine["meta"] == {"total": 1, "limit": 50, "offset": 0, "next_cursor": None}
        assert "steps" not in mine["data"][0]
        everyone = (await http.get("/api/v1/goals", headers=ROOT)).json()
        assert {g["id"] for g in everyone["data"]} == {a["id"], b["id"]}
        only_bob = (await http.get("/api/v1/goals?owner=bob", headers=ROOT)).json()
        assert [g["id"] for g in only_bob["data"]] == [b["id"]]

    async def test_non_admin_owner_filter(self, http: httpx.AsyncClient) -> None:
        await create(http, ALICE)
        own = await http.get("/api/v1/goals?owner=alice", headers=ALICE)
        assert own.json()["meta"]["total"] == 1
        other = await http.get("/api/v1/goals?owner=bob", headers=ALICE)
        assert_error(other, 403, "forbidden")

    async def test_filters_and_paging(self, http: httpx.AsyncClient, manager: GoalManager) -> None:
        done = await finished(http, manager, tags=["a"])
        ids = [(await create(http, model="held", tags=["b"]))["id"] for _ in range(3)]
        page = (
            await http.get("/api/v1/goals?status=active&limit=2&offset=1", headers=ALICE)
        ).json()
        assert page["meta"] == {"total": 3, "limit": 2, "offset": 1, "next_cursor": None}
        assert [g["id"] for g in page["data"]] == ids[::-1][1:3]  # newest first
        completed = (await http.get("/api/v1/goals?status=completed", headers=ALICE)).json()
        assert [g["id"] for g in completed["data"]] == [done["id"]]
        tagged = (await http.get("/api/v1/goals?tag=a", headers=ALICE)).json()
        assert [g["id"] for g in tagged["data"]] == [done["id"]]

    @pytest.mark.parametrize(
        ("query", "field"),
        [
            ("status=sleeping", "status"),
            ("status=", "status"),
            ("limit=0", "limit"),
            ("limit=501", "limit"),
            ("limit=ten", "limit"),
            ("limit=-1", "limit"),
            ("limit=+5", "limit"),
            ("offset=-1", "offset"),
            ("offset=1.5", "offset"),
            ("offset=99999999999999999999", "offset"),
            ("tag=", "tag"),
            ("limit=1&limit=2", "limit"),
            ("stauts=active", "stauts"),
        ],
    )
    async def test_bad_query_values(self, http: httpx.AsyncClient, query: str, field: str) -> None:
        response = await http.get(f"/api/v1/goals?{query}", headers=ALICE)
        assert_error(response, 400, "invalid_request", field)

    async def test_query_not_utf8(self, http: httpx.AsyncClient) -> None:
        response = await http.get("/api/v1/goals?tag=%ff", headers=ALICE)
        assert_error(response, 400, "invalid_request")


class TestListCursor:
    """GET /api/v1/goals?cursor=…: keyset pages beside offset, stable while goals arrive."""

    @pytest.fixture(params=["memory", "sqlite"])
    async def http(
        self, request: pytest.FixtureRequest, tmp_path: Path, provider: HeldProvider
    ) -> AsyncIterator[httpx.AsyncClient]:
        """The API on each built-in backend (a real SQLite file for the second)."""
        url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'g.db'}"
        manager = GoalManager(url, plugins=[Users(), provider], entry_points=False, retry_backoff=0)
        async with manager, client(app_for(manager)) as http:
            yield http

    async def pages(
        self, http: httpx.AsyncClient, query: str, between: Any = None
    ) -> list[dict[str, Any]]:
        """Every page of a listing, following `next_cursor`; `between` runs after each page."""
        pages = []
        url = f"/api/v1/goals?{query}"
        while True:
            response = await http.get(url, headers=ALICE)
            assert response.status_code == 200, response.text
            page = response.json()
            pages.append(page)
            if between is not None:
                await between()
            cursor = page["meta"]["next_cursor"]
            if cursor is None:
                return pages
            url = f"/api/v1/goals?{query}&cursor={cursor}"

    async def test_walks_every_goal_once_while_goals_arrive(self, http: httpx.AsyncClient) -> None:
        """Goals created between pages neither repeat nor push a goal off the listing."""
        ids = [(await create(http, model="held"))["id"] for _ in range(7)]
        arrived: list[str] = []

        async def arrive() -> None:
            arrived.append((await create(http, model="held"))["id"])

        pages = await self.pages(http, "limit=2", between=arrive)
        seen = [goal["id"] for page in pages for goal in page["data"]]
        assert seen == ids[::-1]
        assert [len(page["data"]) for page in pages] == [2, 2, 2, 1]
        # The first page was asked for without a cursor; the others by cursor.
        assert [page["meta"]["offset"] for page in pages] == [0, None, None, None]
        # The total is of the store as each page saw it.
        assert [page["meta"]["total"] for page in pages] == [7, 8, 9, 10]
        assert len(arrived) == 4

    async def test_last_page_has_no_cursor(self, http: httpx.AsyncClient) -> None:
        for _ in range(4):
            await create(http, model="held")
        pages = await self.pages(http, "limit=2")
        assert [page["meta"]["next_cursor"] is None for page in pages] == [False, True]
        empty = await self.pages(http, "tag=none")
        assert empty[0]["data"] == [] and empty[0]["meta"]["next_cursor"] is None

    async def test_filters_hold_across_pages(self, http: httpx.AsyncClient) -> None:
        tagged = [(await create(http, model="held", tags=["x"]))["id"] for _ in range(3)]
        await create(http, model="held")
        await create(http, model="held", tags=["x"], headers=BOB)
        pages = await self.pages(http, "tag=x&status=active&limit=1")
        assert [goal["id"] for page in pages for goal in page["data"]] == tagged[::-1]

    async def test_cursor_from_an_offset_page_continues_it(self, http: httpx.AsyncClient) -> None:
        ids = [(await create(http, model="held"))["id"] for _ in range(5)]
        page = (await http.get("/api/v1/goals?limit=2&offset=1", headers=ALICE)).json()
        cursor = page["meta"]["next_cursor"]
        rest = (await http.get(f"/api/v1/goals?limit=2&cursor={cursor}", headers=ALICE)).json()
        assert [g["id"] for g in rest["data"]] == ids[::-1][3:5]

    @pytest.mark.parametrize("query", ["offset=0", "offset=3"])
    async def test_cursor_with_offset_is_a_400(self, http: httpx.AsyncClient, query: str) -> None:
        await create(http, model="held")
        await create(http, model="held")
        first = (await http.get("/api/v1/goals?limit=1", headers=ALICE)).json()
        cursor = first["meta"]["next_cursor"]
        response = await http.get(f"/api/v1/goals?cursor={cursor}&{query}", headers=ALICE)
        assert_error(response, 400, "invalid_request", "cursor")

    @pytest.mark.parametrize(
        "cursor",
        [
            "",
            "garbage",
            "%00",
            "x" * 10_000,
            "AAAAAAAAAAAAAAAA",  # the right shape, a wrong check
            "AAAAAAAAAAAAAAA=",
            "é" * 16,
            "-1",
            encode_cursor(2**64 - 1),  # a forged cursor past what SQLite can bind
            encode_cursor(0),
        ],
    )
    async def test_garbage_cursor_is_a_400(self, http: httpx.AsyncClient, cursor: str) -> None:
        response = await http.get("/api/v1/goals", params={"cursor": cursor}, headers=ALICE)
        assert_error(response, 400, "invalid_request", "cursor")

    async def test_tampered_cursor_is_a_400(self, http: httpx.AsyncClient) -> None:
        """Any one character of a real cursor changed makes it refused, never a 500."""
        for _ in range(2):
            await create(http, model="held")
        cursor = (await http.get("/api/v1/goals?limit=1", headers=ALICE)).json()["meta"][
            "next_cursor"
        ]
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        for i, char in enumerate(cursor):
            for other in (alphabet[(alphabet.index(char) + 1) % 64], "="):
                tampered = cursor[:i] + other + cursor[i + 1 :]
                response = await http.get(
                    "/api/v1/goals", params={"cursor": tampered}, headers=ALICE
                )
                assert_error(response, 400, "invalid_request", "cursor")
        assert_error(
            await http.get("/api/v1/goals", params={"cursor": cursor[:-1]}, headers=ALICE),
            400,
            "invalid_request",
            "cursor",
        )


class TestGetAndCancel:
    """GET and DELETE /api/v1/goals/{id}: the full goal, and cancelling it."""

    async def test_full_goal(self, http: httpx.AsyncClient, manager: GoalManager) -> None:
        goal = await finished(http, manager, description="Search\nSummarise")
        response = await http.get(f"/api/v1/goals/{goal['id']}", headers=ALICE)
        assert response.status_code == 200
        data = response.json()["data"]
        assert data["status"] == "completed"
        assert data["total_steps"] == data["steps_completed"] == 2
        assert [s["index"] for s in data["steps"]] == [1, 2]
        step = data["steps"][0]
        assert set(step) >= {"title", "status", "attempts", "result", "error", "started_at"}
        assert data["result"] is not None

    async def test_cancel(self, http: httpx.AsyncClient) -> None:
        goal = await create(http, model="held", description="one\ntwo")
        response = await http.delete(f"/api/v1/goals/{goal['id']}", headers=ALICE)
        assert response.status_code == 200
        data = response.json()["data"]
        assert data == {
            "id": goal["id"],
            "status": "cancelled",
            "steps_completed": 0,
            "total_steps": data["total_steps"],
        }
        again = await http.delete(f"/api/v1/goals/{goal['id']}", headers=ALICE)
        assert_error(again, 409, "conflict")

    async def test_cancelling_a_completed_goal_is_a_409(
        self, http: httpx.AsyncClient, manager: GoalManager
    ) -> None:
        goal = await finished(http, manager)
        response = await http.delete(f"/api/v1/goals/{goal['id']}", headers=ALICE)
        assert_error(response, 409, "conflict")

    @pytest.mark.parametrize("method", ["GET", "DELETE"])
    async def test_another_users_goal_is_a_403(self, http: httpx.AsyncClient, method: str) -> None:
        goal = await create(http, model="held")
        response = await http.request(method, f"/api/v1/goals/{goal['id']}", headers=BOB)
        assert_error(response, 403, "forbidden")

    @pytest.mark.parametrize("method", ["GET", "DELETE"])
    async def test_unknown_goal_is_a_404(self, http: httpx.AsyncClient, method: str) -> None:
        response = await http.request(method, "/api/v1/goals/goal-nope", headers=ALICE)
        assert_error(response, 404, "not_found")


class TestProtocolErrors:
    """Unknown paths, wrong methods, missing credentials and failures answer with envelopes."""

    @pytest.mark.parametrize(
        "path", ["/", "/api/v1", "/api/v1/goals/", "/api/v2/goals", "/api/v1/goals/x/y"]
    )
    async def test_unknown_path_is_a_404(self, http: httpx.AsyncClient, path: str) -> None:
        assert_error(await http.get(path, headers=ALICE), 404, "not_found")

    @pytest.mark.parametrize(
        ("method", "path", "allow"),
        [
            ("PUT", "/api/v1/goals", "GET, POST"),
            ("DELETE", "/api/v1/goals", "GET, POST"),
            ("POST", "/api/v1/goals/goal-x", "GET, DELETE"),
            ("PATCH", "/api/v1/goals/goal-x", "GET, DELETE"),
            ("POST", "/api/v1/goals/goal-x/events", "GET"),
            ("HEAD", "/api/v1/goals", "GET, POST"),
            ("POST", "/api/v1/openapi.json", "GET"),
        ],
    )
    async def test_wrong_method_is_a_405_with_allow(
        self, http: httpx.AsyncClient, method: str, path: str, allow: str
    ) -> None:
        response = await http.request(method, path, headers=ALICE)
        assert response.status_code == 405
        assert response.headers["allow"] == allow
        if method != "HEAD":
            assert_error(response, 405, "method_not_allowed")

    @pytest.mark.parametrize(
        "authorization",
        [
            None,
            "Bearer nope",
            "Basic YWxpY2U6c2VjcmV0",
            "Bearer",
            "bearer  ",
            "alice-token",
            "Bearer alice-token, Bearer bob-token",
            "Bearer alice token",
        ],
    )
    async def test_bad_credentials_are_a_401(
        self, http: httpx.AsyncClient, authorization: str | None
    ) -> None:
        headers = {} if authorization is None else {"Authorization": authorization}
        response = await http.get("/api/v1/goals", headers=headers)
        assert_error(response, 401, "not_authenticated")
        assert response.headers["www-authenticate"] == "Bearer"

    async def test_scheme_is_case_insensitive(self, http: httpx.AsyncClient) -> None:
        response = await http.get("/api/v1/goals", headers={"Authorization": "bearer alice-token"})
        assert response.status_code == 200

    async def test_failing_authenticator_is_a_generic_500_and_the_token_stays_secret(
        self, manager: GoalManager, caplog: pytest.LogCaptureFixture
    ) -> None:
        def authenticate(token: str) -> Principal | None:
            raise RuntimeError(f"lookup of {token} failed")

        app = app_for(manager, authenticate=authenticate)
        with caplog.at_level(logging.DEBUG):
            async with client(app) as http:
                response = await http.get(
                    "/api/v1/goals", headers={"Authorization": "Bearer s3cr3t-t0ken"}
                )
        assert_error(response, 500, "internal_error")
        assert "s3cr3t" not in response.text
        assert "lookup of <token> failed" in caplog.text
        assert "s3cr3t" not in caplog.text

    async def test_async_authenticate_replaces_hooks(self, manager: GoalManager) -> None:
        async def authenticate(token: str) -> Principal | None:
            return Principal("carol") if token == "carol" else None

        async with client(app_for(manager, authenticate=authenticate)) as http:
            goal = await create(http, {"Authorization": "Bearer carol"})
            assert goal["owner"] == "carol"
            refused = await http.get("/api/v1/goals", headers=ALICE)
            assert refused.status_code == 401

    async def test_unexpected_error_is_a_generic_500(
        self,
        app: goalkit.asgi.GoalkitApp,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        async def broken(*args: object, **kwargs: object) -> None:
            raise ZeroDivisionError("secret internals")

        monkeypatch.setattr(app.manager, "list", broken)
        with caplog.at_level(logging.ERROR):
            async with client(app) as http:
                response = await http.get("/api/v1/goals", headers=ALICE)
        assert_error(response, 500, "internal_error")
        assert "secret internals" not in response.text
        assert "ZeroDivisionError" in caplog.text

    async def test_openapi_needs_no_token(self, http: httpx.AsyncClient) -> None:
        response = await http.get("/api/v1/openapi.json")
        assert response.status_code == 200
        assert response.json()["openapi"].startswith("3.1")


WHO = {
    "no token": {},
    "bad token": {"Authorization": "Bearer wrong"},
    "other user": BOB,
    "owner": ALICE,
    "admin": ROOT,
}
# Expected status per endpoint, for the callers in WHO's order, on a goal alice owns.
MATRIX = {
    ("POST", "/api/v1/goals"): [401, 401, 201, 201, 201],
    ("GET", "/api/v1/goals"): [401, 401, 200, 200, 200],
    ("GET", "/api/v1/goals/{id}"): [401, 401, 403, 200, 200],
    ("DELETE", "/api/v1/goals/{id}"): [401, 401, 403, 200, 200],
    ("GET", "/api/v1/goals/{id}/events"): [401, 401, 403, 200, 200],
}
CASES = [
    (method, path, who, statuses[i])
    for (method, path), statuses in MATRIX.items()
    for i, who in enumerate(WHO)
]


class TestAuthMatrix:
    """Every endpoint × {no token, bad token, other user, owner, admin} → its status."""

    @pytest.mark.parametrize(("method", "path", "who", "expected"), CASES)
    async def test_matrix(
        self,
        http: httpx.AsyncClient,
        manager: GoalManager,
        method: str,
        path: str,
        who: str,
        expected: int,
    ) -> None:
        # DELETE needs a goal still running; the event stream one that has ended.
        if method == "DELETE":
            goal = await create(http, model="held")
        else:
            goal = await finished(http, manager)
        body = {"json": {"description": "x"}} if method == "POST" else {}
        response = await http.request(method, path.format(id=goal["id"]), headers=WHO[who], **body)
        assert response.status_code == expected, response.text
        if expected == 401:
            assert response.headers["www-authenticate"] == "Bearer"
        if who == "other user" and method == "GET" and path == "/api/v1/goals":
            assert response.json()["data"] == []


class TestEvents:
    """GET /api/v1/goals/{id}/events: replay, live following, reconnects and disconnects."""

    async def test_replay_of_a_finished_goal(
        self, http: httpx.AsyncClient, manager: GoalManager
    ) -> None:
        goal = await finished(http, manager, description="a\nb")
        response = await http.get(f"/api/v1/goals/{goal['id']}/events", headers=ALICE)
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        messages = parse_sse(response.text)
        assert messages[0] == {"retry": ["3000"]}
        events = events_of(response.text)
        assert [e["id"] for e in events] == list(range(1, len(events) + 1))
        assert events[0]["type"] == "goal.created"
        assert events[-1]["type"] == "goal.completed"
        for message, event in zip(messages[1:], events, strict=True):
            assert message["id"] == [str(event["id"])]
            assert message["event"] == [event["type"]]
            assert set(event) == {"id", "type", "goal_id", "workflow_id", "ts", "data"}

    async def test_replay_after(self, http: httpx.AsyncClient, manager: GoalManager) -> None:
        goal = await finished(http, manager)
        url = f"/api/v1/goals/{goal['id']}/events"
        full = events_of((await http.get(url, headers=ALICE)).text)
        tail = events_of((await http.get(f"{url}?after=2", headers=ALICE)).text)
        assert tail == full[2:]
        # The header wins over the query.
        resumed = await http.get(f"{url}?after=1", headers=ALICE | {"Last-Event-ID": "3"})
        assert events_of(resumed.text) == full[3:]

    async def test_after_the_terminal_event_is_a_204(
        self, http: httpx.AsyncClient, manager: GoalManager
    ) -> None:
        goal = await finished(http, manager)
        url = f"/api/v1/goals/{goal['id']}/events"
        last = events_of((await http.get(url, headers=ALICE)).text)[-1]["id"]
        for headers in ({"Last-Event-ID": str(last)}, {}):
            suffix = "" if headers else f"?after={last + 5}"
            response = await http.get(url + suffix, headers=ALICE | headers)
            assert response.status_code == 204
            assert response.content == b""
            assert response.headers["cache-control"] == "no-store"

    async def test_an_empty_last_event_id_is_no_id(
        self, http: httpx.AsyncClient, manager: GoalManager
    ) -> None:
        goal = await finished(http, manager)
        url = f"/api/v1/goals/{goal['id']}/events"
        full = events_of((await http.get(url, headers=ALICE)).text)
        for query in ("", "?after=2"):
            response = await http.get(url + query, headers=ALICE | {"Last-Event-ID": ""})
            assert response.status_code == 200, response.text
            assert events_of(response.text) == full[2 if query else 0 :]

    @pytest.mark.parametrize(
        ("query", "headers", "field"),
        [
            ("?after=-1", {}, "after"),
            ("?after=x", {}, "after"),
            ("?after=", {}, "after"),
            ("", {"Last-Event-ID": "x"}, "Last-Event-ID"),
            ("", {"Last-Event-ID": "-3"}, "Last-Event-ID"),
            ("", {"Last-Event-ID": "1" * 16}, "Last-Event-ID"),
            ("?after=x", {"Last-Event-ID": "2"}, "after"),
        ],
    )
    async def test_bad_positions_are_a_400(
        self, http: httpx.AsyncClient, query: str, headers: dict[str, str], field: str
    ) -> None:
        goal = await create(http, model="held")
        response = await http.get(
            f"/api/v1/goals/{goal['id']}/events{query}", headers=ALICE | headers
        )
        assert_error(response, 400, "invalid_request", field)

    async def test_live_events_until_the_end_with_keepalives(
        self, manager: GoalManager, provider: HeldProvider
    ) -> None:
        app = app_for(manager, keepalive=0.01, sse_retry_ms=1234)
        async with client(app) as http:
            goal = await create(http, model="held", description="one\ntwo")
            response: httpx.Response | None = None

            async def follow() -> None:
                nonlocal response
                response = await http.get(f"/api/v1/goals/{goal['id']}/events", headers=ALICE)

            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                await anyio.sleep(0.1)
                provider.release(goal["id"])
        assert response is not None
        assert response.status_code == 200
        messages = parse_sse(response.text)
        assert messages[0] == {"retry": ["1234"]}
        assert {"": ["keep-alive"]} in messages
        assert ": keep-alive\n\n" in response.text
        events = events_of(response.text)
        assert [e["id"] for e in events] == list(range(1, len(events) + 1))
        assert events[-1]["type"] == "goal.completed"
        assert [e["type"] for e in events].count("goal.step_completed") == 2

    async def test_reconnect_misses_nothing_and_repeats_nothing(
        self, manager: GoalManager, provider: HeldProvider
    ) -> None:
        app = app_for(manager)
        async with client(app) as http:
            goal = await create(http, model="held", description="one\ntwo")
        # The first connection reads two events, then drops.
        sent, _ = await drive(
            app,
            "GET",
            f"/api/v1/goals/{goal['id']}/events",
            headers=[(b"authorization", b"Bearer alice-token")],
            disconnect_after=4,  # start, retry, two events
        )
        first = events_of(b"".join(m.get("body", b"") for m in sent[1:]).decode())
        # Two or more: the client drops after two, but events already read from storage may
        # still be written before the server notices (how many exist is a matter of timing).
        assert len(first) >= 2
        provider.release(goal["id"])
        async with client(app) as http:
            rest = await http.get(
                f"/api/v1/goals/{goal['id']}/events",
                headers=ALICE | {"Last-Event-ID": str(first[-1]["id"])},
            )
        second = events_of(rest.text)
        ids = [e["id"] for e in first + second]
        assert ids == list(range(1, len(ids) + 1))
        assert second[-1]["type"] == "goal.completed"

    @pytest.mark.parametrize(("headers", "status"), [(BOB, 403), ({}, 401)])
    async def test_events_are_guarded(
        self, http: httpx.AsyncClient, headers: dict[str, str], status: int
    ) -> None:
        goal = await create(http, model="held")
        response = await http.get(f"/api/v1/goals/{goal['id']}/events", headers=headers)
        assert response.status_code == status

    async def test_unknown_goal_is_a_404(self, http: httpx.AsyncClient) -> None:
        response = await http.get("/api/v1/goals/goal-nope/events", headers=ALICE)
        assert_error(response, 404, "not_found")

    async def test_disconnects_leave_no_subscription_and_no_task(
        self, manager: GoalManager, app: goalkit.asgi.GoalkitApp, provider: HeldProvider
    ) -> None:
        async with client(app) as http:
            goal = await create(http, model="held")
        await provider.started[goal["id"]].wait()  # its coordinator is part of the baseline
        path = f"/api/v1/goals/{goal['id']}/events"
        auth = [(b"authorization", b"Bearer alice-token")]
        # There is no public counter: the bus's is the ground truth for leaks.
        subscriptions = manager._bus.subscriptions
        tasks = _task_count()
        for _ in range(1000):
            sent, _ = await drive(app, "GET", path, headers=auth, disconnect_after=3)
            assert sent[0]["status"] == 200
        assert manager._bus.subscriptions == subscriptions == 0
        assert _task_count() == tasks

    async def test_send_errors_end_the_stream(
        self, manager: GoalManager, app: goalkit.asgi.GoalkitApp
    ) -> None:
        async with client(app) as http:
            goal = await create(http, model="held")

        async def receive() -> dict[str, Any]:
            await anyio.sleep_forever()
            raise AssertionError

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                raise OSError("connection reset")

        scope = {
            "type": "http",
            "method": "GET",
            "path": f"/api/v1/goals/{goal['id']}/events",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"authorization", b"Bearer alice-token")],
        }
        with anyio.fail_after(5):
            await app(scope, receive, send)
        assert manager._bus.subscriptions == 0


class Listener:
    """One event stream called through raw ASGI, so a test can see it open and end."""

    def __init__(self, app: goalkit.asgi.GoalkitApp, goal_id: str, token: str) -> None:
        self.app = app
        self.sent: list[dict[str, Any]] = []
        self.opened = anyio.Event()  # the first body chunk (the retry line) went out
        self.gone = anyio.Event()  # set it to make the client disconnect
        self.done = anyio.Event()  # the app returned
        self.scope = {
            "type": "http",
            "method": "GET",
            "path": f"/api/v1/goals/{goal_id}/events",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"authorization", f"Bearer {token}".encode())],
        }

    async def run(self) -> None:
        async def receive() -> dict[str, Any]:
            await self.gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            self.sent.append(message)
            if message["type"] == "http.response.body":
                self.opened.set()

        try:
            await self.app(self.scope, receive, send)
        finally:
            self.opened.set()  # also when it was refused
            self.done.set()

    @property
    def status(self) -> int:
        status: int = self.sent[0]["status"]
        return status

    @property
    def ended_cleanly(self) -> bool:
        last = self.sent[-1]
        return last["type"] == "http.response.body" and last.get("more_body") is False


class TestStreamLimits:
    """Draining ends streams cleanly and refuses new ones; each user has a cap on streams."""

    async def test_drain_ends_open_streams_with_a_final_body(
        self, manager: GoalManager, app: goalkit.asgi.GoalkitApp, provider: HeldProvider
    ) -> None:
        async with client(app) as http:
            goal = await create(http, model="held")
            finished_goal = await finished(http, manager)
        listeners = [Listener(app, goal["id"], "alice-token") for _ in range(3)]
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for listener in listeners:
                    tg.start_soon(listener.run)
                    await listener.opened.wait()
                app.drain()
        for listener in listeners:
            assert listener.status == 200
            assert listener.ended_cleanly
        assert manager._bus.subscriptions == 0
        async with client(app) as http:
            refused = await http.get(f"/api/v1/goals/{goal['id']}/events", headers=ALICE)
            assert_error(refused, 503, "unavailable")
            assert refused.headers["retry-after"] == "3"
            # A finished goal's reconnect is still told to stop.
            path = f"/api/v1/goals/{finished_goal['id']}/events"
            ended = await http.get(path, headers=ALICE | {"Last-Event-ID": "999"})
            assert ended.status_code == 204
        provider.release(goal["id"])

    async def test_a_user_may_hold_a_limited_number_of_streams(
        self, manager: GoalManager, provider: HeldProvider
    ) -> None:
        app = app_for(manager, max_streams_per_user=2, sse_retry_ms=7500)
        async with client(app) as http:
            goal = await create(http, model="held")
        held = [Listener(app, goal["id"], "alice-token") for _ in range(2)]
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for listener in held:
                    tg.start_soon(listener.run)
                    await listener.opened.wait()
                async with client(app) as http:
                    refused = await http.get(f"/api/v1/goals/{goal['id']}/events", headers=ALICE)
                    assert_error(refused, 429, "limit_exceeded")
                    assert refused.headers["retry-after"] == "8"
                    assert "at most 2 event streams" in refused.json()["error"]["message"]
                # Another user's streams are counted apart.
                other = Listener(app, goal["id"], "root-token")
                tg.start_soon(other.run)
                await other.opened.wait()
                assert other.status == 200
                # A stream that ends gives its place back.
                held[0].gone.set()
                await held[0].done.wait()
                again = Listener(app, goal["id"], "alice-token")
                tg.start_soon(again.run)
                await again.opened.wait()
                provider.release(goal["id"])
        assert all(x.status == 200 and x.ended_cleanly for x in [held[1], other, again])

    async def test_no_cap_with_none(self, manager: GoalManager, provider: HeldProvider) -> None:
        app = app_for(manager, max_streams_per_user=None)
        async with client(app) as http:
            goal = await create(http, model="held")
        listeners = [Listener(app, goal["id"], "alice-token") for _ in range(12)]
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for listener in listeners:
                    tg.start_soon(listener.run)
                    await listener.opened.wait()
                provider.release(goal["id"])
        assert {listener.status for listener in listeners} == {200}

    @pytest.mark.parametrize("value", [0, -1, 1.5, True])
    async def test_bad_cap_is_refused(self, manager: GoalManager, value: Any) -> None:
        with pytest.raises(ValueError, match="max_streams_per_user"):
            app_for(manager, max_streams_per_user=value)


class TestStalledClients:
    """A client that stops reading is dropped after `send_timeout`, holding nothing after."""

    async def test_a_stalled_client_is_dropped(
        self, manager: GoalManager, provider: HeldProvider
    ) -> None:
        app = app_for(manager, send_timeout=0.05)
        async with client(app) as http:
            goal = await create(http, model="held", description="one")
        listener = Listener(app, goal["id"], "alice-token")
        stalled = anyio.Event()

        async def send(message: dict[str, Any]) -> None:
            listener.sent.append(message)
            if message["type"] == "http.response.body" and len(listener.sent) > 2:
                stalled.set()
                await anyio.sleep_forever()  # a full socket buffer that never drains

        async def receive() -> dict[str, Any]:
            await anyio.sleep_forever()
            raise AssertionError

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(app, listener.scope, receive, send)
                await provider.started[goal["id"]].wait()
                provider.release(goal["id"])  # events to write: the writes stall
        assert stalled.is_set()
        assert manager._bus.subscriptions == 0


def _task_count() -> int:
    import asyncio

    return len(asyncio.all_tasks())


class TestMounting:
    """The app works under a prefix, in hosts, served alone, and opens a closed manager."""

    async def test_root_path(self, app: goalkit.asgi.GoalkitApp) -> None:
        async with client(app, root_path="/goalkit") as http:
            response = await http.post(
                "/goalkit/api/v1/goals", json={"description": "x"}, headers=ALICE
            )
            assert response.status_code == 201
            goal_id = response.json()["data"]["id"]
            assert response.headers["location"] == f"/goalkit/api/v1/goals/{goal_id}"
            listed = await http.get("/goalkit/api/v1/goals", headers=ALICE)
            assert listed.json()["meta"]["total"] == 1
            document = (await http.get("/goalkit/api/v1/openapi.json")).json()
            assert document["servers"] == [{"url": "/goalkit"}]

    async def test_starlette_mount(self, provider: HeldProvider) -> None:
        from starlette.applications import Starlette
        from starlette.routing import Mount

        manager = make_manager(provider)
        host = Starlette(
            routes=[Mount("/goalkit", goalkit.asgi.create_app(manager))],
            lifespan=goalkit.asgi.lifespan(manager),
        )
        await _exercise_host(host, manager)

    async def test_fastapi_mount(self, provider: HeldProvider) -> None:
        from fastapi import FastAPI

        manager = make_manager(provider)
        host = FastAPI(lifespan=goalkit.asgi.lifespan(manager))
        host.mount("/goalkit", goalkit.asgi.create_app(manager))
        await _exercise_host(host, manager)

    async def test_served_alone_lifespan(self, provider: HeldProvider) -> None:
        manager = make_manager(provider)
        app = goalkit.asgi.create_app(manager)
        replies = await _run_lifespan(app, manager)
        assert replies == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        assert not manager.is_open

    async def test_lifespan_reports_startup_failure(self) -> None:
        manager = GoalManager("nosuch://x", entry_points=False)
        replies: list[dict[str, Any]] = []
        messages = iter([{"type": "lifespan.startup"}])

        async def receive() -> dict[str, Any]:
            return next(messages)

        async def send(message: dict[str, Any]) -> None:
            replies.append(message)

        await goalkit.asgi.create_app(manager)({"type": "lifespan"}, receive, send)
        assert replies[0]["type"] == "lifespan.startup.failed"
        assert "nosuch" in replies[0]["message"]

    @pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
    async def test_first_request_opens_the_manager(self, provider: HeldProvider) -> None:
        manager = make_manager(provider)
        app = goalkit.asgi.create_app(manager)
        async with client(app) as http:
            results: list[int] = []

            async def post() -> None:
                response = await http.post(
                    "/api/v1/goals", json={"description": "x"}, headers=ALICE
                )
                results.append(response.status_code)

            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(post)
            assert results == [201] * 5
            assert manager.is_open
            listed = await http.get("/api/v1/goals", headers=ALICE)
            assert listed.json()["meta"]["total"] == 5
        # It would stay open until the event loop ends; the app can close it sooner.
        await app.close()
        assert not manager.is_open

    async def test_a_failed_first_open_fails_its_requests_and_the_next_one_retries(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        class FlakyStorage:
            """Serves ``flaky://``: memory storage whose first open fails."""

            def __init__(self) -> None:
                self.opens = 0

            @goalkit.hookimpl
            def goalkit_storage(self, url: str) -> object | None:
                from goalkit.storage.memory import MemoryStorage

                if url != "flaky://":
                    return None
                plugin, inner = self, MemoryStorage()

                class Flaky:
                    async def open(self) -> None:
                        plugin.opens += 1
                        if plugin.opens == 1:
                            raise goalkit.StorageError("disk not mounted yet")
                        await inner.open()

                    def __getattr__(self, name: str) -> object:
                        return getattr(inner, name)

                return Flaky()

        storage = FlakyStorage()
        manager = GoalManager("flaky://", plugins=[Users(), storage], entry_points=False)
        app = goalkit.asgi.create_app(manager)
        statuses: list[int] = []
        texts: list[str] = []
        with caplog.at_level(logging.ERROR, logger="goalkit.asgi"):
            async with client(app) as http:

                async def post() -> None:
                    response = await http.post(
                        "/api/v1/goals", json={"description": "x"}, headers=ALICE
                    )
                    statuses.append(response.status_code)
                    texts.append(response.text)

                async with anyio.create_task_group() as tg:
                    for _ in range(3):
                        tg.start_soon(post)
                assert statuses == [500] * 3  # one attempt, its error for each waiter
                assert all("internal_error" in text for text in texts)
                assert not any("disk not mounted" in text for text in texts)  # logged only
                await post()
                assert statuses[-1] == 201
        assert storage.opens == 2
        assert "could not open the goal manager" in caplog.text
        await app.close()
        assert not manager.is_open

    @pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
    async def test_closing_a_manager_opened_on_request_drains_its_sinks(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """`app.close()` leaves the manager in the task and scope that entered it."""
        sink = SlowSink()
        manager = make_manager(sink)
        app = goalkit.asgi.create_app(manager)
        async with client(app) as http:
            created = await http.post("/api/v1/goals", json={"description": "x"}, headers=ALICE)
            goal = await manager.wait(created.json()["data"]["id"], timeout=5)
        with caplog.at_level(logging.ERROR):
            await app.close()  # raises what leaving the manager raised
        assert not manager.is_open
        assert [record.getMessage() for record in caplog.records] == []
        assert sink.seen == [(goal.id, n) for n in range(1, goal.last_event_id + 1)]

    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    def test_a_manager_opened_on_request_is_left_when_the_event_loop_ends(
        self, backend: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Nobody closes it: the loop's end leaves it without an error (trio: sinks drained)."""
        sink = SlowSink()
        manager = make_manager(sink)
        app = goalkit.asgi.create_app(manager)

        async def serve() -> int:
            async with client(app) as http:
                created = await http.post("/api/v1/goals", json={"description": "x"}, headers=ALICE)
                goal = await manager.wait(created.json()["data"]["id"], timeout=5)
            return goal.last_event_id

        with caplog.at_level(logging.ERROR):
            last = anyio.run(serve, backend=backend)
        assert [record.getMessage() for record in caplog.records] == []
        assert not manager.is_open
        if backend == "trio":  # asyncio cancels every task at once: see docs/mounting.md
            assert [n for _, n in sink.seen] == list(range(1, last + 1))


async def _exercise_host(host: Any, manager: GoalManager) -> None:
    async with goalkit.asgi.lifespan(manager):  # what the server's lifespan does for the host
        pass
    assert not manager.is_open
    # httpx does not run lifespan: run the host's through the ASGI protocol, as a server would.
    async with _lifespan_of(host):
        assert manager.is_open
        async with client(host) as http:
            created = await http.post(
                "/goalkit/api/v1/goals", json={"description": "x"}, headers=ALICE
            )
            assert created.status_code == 201, created.text
            goal_id = created.json()["data"]["id"]
            await manager.wait(goal_id, timeout=5)
            got = await http.get(f"/goalkit/api/v1/goals/{goal_id}", headers=ALICE)
            assert got.json()["data"]["status"] == "completed"
            stream = await http.get(f"/goalkit/api/v1/goals/{goal_id}/events", headers=ALICE)
            assert events_of(stream.text)[-1]["type"] == "goal.completed"
            missing = await http.get("/goalkit/api/v1/nothing", headers=ALICE)
            assert missing.status_code == 404
            document = (await http.get("/goalkit/api/v1/openapi.json")).json()
            assert document["servers"] == [{"url": "/goalkit"}]
    assert not manager.is_open


@contextlib.asynccontextmanager
async def _lifespan_of(app: Any) -> AsyncIterator[None]:
    """Run `app`'s ASGI lifespan around the block, as a server does, checking each reply."""
    to_app, app_inbox = anyio.create_memory_object_stream[dict[str, Any]](1)
    app_outbox, from_app = anyio.create_memory_object_stream[dict[str, Any]](1)
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    async with to_app, app_inbox, app_outbox, from_app, anyio.create_task_group() as tg:
        tg.start_soon(app, scope, app_inbox.receive, app_outbox.send)
        await to_app.send({"type": "lifespan.startup"})
        reply = await from_app.receive()
        assert reply["type"] == "lifespan.startup.complete", reply
        yield
        await to_app.send({"type": "lifespan.shutdown"})
        reply = await from_app.receive()
        assert reply["type"] == "lifespan.shutdown.complete", reply


async def _run_lifespan(app: Any, manager: GoalManager) -> list[str]:
    replies: list[str] = []
    inbox: list[dict[str, Any]] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    started = anyio.Event()
    proceed = anyio.Event()

    async def receive() -> dict[str, Any]:
        message = inbox.pop(0)
        if message["type"] == "lifespan.shutdown":
            await proceed.wait()
        return message

    async def send(message: dict[str, Any]) -> None:
        replies.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            started.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(app, {"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
        await started.wait()
        assert manager.is_open
        async with client(app) as http:
            response = await http.post("/api/v1/goals", json={"description": "x"}, headers=ALICE)
            assert response.status_code == 201
        proceed.set()
    return replies

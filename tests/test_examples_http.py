"""The host-application examples: goalkit mounted under ``/goalkit`` in FastAPI and Starlette.

Each example is imported as uvicorn would import it (``GOALKIT_TOKENS`` and
``GOALKIT_STORAGE`` from the environment) and driven through httpx's ASGI transport. httpx
does not run the ASGI lifespan, so `serving` does what a server does: it sends the host
``lifespan.startup`` (with a ``state`` dict, as uvicorn does) before the requests and
``lifespan.shutdown`` after them.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HOSTS = ["fastapi_app", "starlette_app"]
TOKENS = """
[tokens]
"alice-token" = { user = "alice" }
"bob-token" = { user = "bob" }
"""


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=HOSTS)
def example(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    """An example module, imported with a tokens file and in-memory storage."""
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(textwrap.dedent(TOKENS), encoding="utf-8")
    tokens.chmod(0o600)
    monkeypatch.setenv("GOALKIT_TOKENS", str(tokens))
    monkeypatch.setenv("GOALKIT_STORAGE", "memory://")
    yield load(request.param)


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[None]:
    """Run `app`'s ASGI lifespan around the block, as uvicorn with ``lifespan="on"`` would."""
    to_app, app_inbox = anyio.create_memory_object_stream[dict[str, Any]](2)
    app_outbox, from_app = anyio.create_memory_object_stream[dict[str, Any]](2)

    async def run() -> None:
        async with app_inbox, app_outbox:
            scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
            await app(scope, app_inbox.receive, app_outbox.send)

    async with anyio.create_task_group() as tg, to_app, from_app:
        tg.start_soon(run)
        await to_app.send({"type": "lifespan.startup"})
        started = await from_app.receive()
        assert started["type"] == "lifespan.startup.complete", started.get("message")
        try:
            yield
        finally:
            await to_app.send({"type": "lifespan.shutdown"})
            stopped = await from_app.receive()
            assert stopped["type"] == "lifespan.shutdown.complete", stopped.get("message")


@pytest.fixture
async def client(example: ModuleType) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the example's `app`, inside the host's lifespan."""
    app: Any = example.app
    async with (
        serving(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://host") as c,
    ):
        yield c


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.anyio
class TestMountedExamples:
    """goalkit works under /goalkit beside the host's own route, in each host."""

    async def test_goal_lifecycle_under_prefix(self, client: httpx.AsyncClient) -> None:
        """Create, get, list and stream a goal under the /goalkit prefix."""
        created = await client.post(
            "/goalkit/api/v1/goals",
            json={"description": "Find sources, then summarise them", "tags": ["x"]},
            headers=auth("alice-token"),
        )
        assert created.status_code == 201, created.text
        goal = created.json()["data"]
        assert goal["owner"] == "alice"

        got = await client.get(f"/goalkit/api/v1/goals/{goal['id']}", headers=auth("alice-token"))
        assert got.status_code == 200
        listed = await client.get("/goalkit/api/v1/goals", headers=auth("alice-token"))
        assert [g["id"] for g in listed.json()["data"]] == [goal["id"]]

        events = await client.get(
            f"/goalkit/api/v1/goals/{goal['id']}/events", headers=auth("alice-token")
        )
        assert events.status_code == 200
        assert events.headers["content-type"].startswith("text/event-stream")
        types = [line[7:] for line in events.text.splitlines() if line.startswith("event: ")]
        assert types[0] == "goal.created" and types[-1] == "goal.completed"

    async def test_host_route_shares_the_manager(self, client: httpx.AsyncClient) -> None:
        """The host's own /stats route answers, from the manager goalkit uses."""
        before = await client.get("/stats")
        assert before.status_code == 200
        assert before.json() == {"active_goals": 0}
        await client.post(
            "/goalkit/api/v1/goals",
            json={"description": "Wait a while", "model": "scripted/5"},
            headers=auth("alice-token"),
        )
        assert (await client.get("/stats")).json() == {"active_goals": 1}

    async def test_auth_applies_under_prefix(self, client: httpx.AsyncClient) -> None:
        """Tokens come from the tokens file: none is a 401, another user's goal a 403."""
        missing = await client.get("/goalkit/api/v1/goals")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        created = await client.post(
            "/goalkit/api/v1/goals", json={"description": "Mine"}, headers=auth("alice-token")
        )
        goal_id = created.json()["data"]["id"]
        other = await client.get(f"/goalkit/api/v1/goals/{goal_id}", headers=auth("bob-token"))
        assert other.status_code == 403

    async def test_openapi_under_prefix(self, client: httpx.AsyncClient) -> None:
        """The OpenAPI document is served under the prefix, without a token."""
        response = await client.get("/goalkit/api/v1/openapi.json")
        assert response.status_code == 200
        assert response.json()["openapi"].startswith("3.1")

    async def test_outside_prefix_is_the_hosts(self, client: httpx.AsyncClient) -> None:
        """goalkit's paths without the prefix are not goalkit's: the host answers 404."""
        response = await client.get("/api/v1/goals", headers=auth("alice-token"))
        assert response.status_code == 404


class TestSelfCheck:
    """Each example, run as a script, checks itself in process and exits 0."""

    @pytest.mark.parametrize("name", HOSTS)
    def test_script(self, name: str, tmp_path: Path) -> None:
        """The self-check creates a goal, streams it to completion and reads the host route."""
        done = subprocess.run(
            [sys.executable, EXAMPLES / f"{name}.py"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].startswith("201 goal-") and lines[0].endswith(" active")
        assert "'goal.created'" in lines[1] and "'goal.completed'" in lines[1]
        assert lines[2] == "{'active_goals': 0}"
        assert not list(tmp_path.iterdir())  # a self-check leaves no database behind

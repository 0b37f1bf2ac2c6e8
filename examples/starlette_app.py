"""A Starlette application that serves goalkit's HTTP API under ``/goalkit``.

Serve it with uvicorn (tokens come from the TOML file named by ``GOALKIT_TOKENS``, by default
``tokens.toml``; without the file every goalkit request is a 401):

    uvicorn starlette_app:app --app-dir examples

Run as a script, it checks itself instead: it serves the app in process through httpx, creates
a goal, streams its events and prints what it saw.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from goalkit import GoalManager, Principal
from goalkit.asgi import create_app, lifespan
from goalkit.auth import StaticTokens, TokensFile


def build(manager: GoalManager) -> Starlette:
    """The host application: its own routes, and goalkit mounted under /goalkit."""

    async def stats(request: Request) -> JSONResponse:
        """A route of the host's own, using the same manager."""
        active = await manager.list(status="active", limit=1)
        return JSONResponse({"active_goals": active.total})

    return Starlette(
        routes=[Route("/stats", stats), Mount("/goalkit", app=create_app(manager))],
        lifespan=lifespan(manager),  # the host's lifespan opens and closes the manager
    )


def tokens() -> list[object]:
    path = Path(os.environ.get("GOALKIT_TOKENS", "tokens.toml"))
    return [TokensFile(path)] if path.exists() else []


app = build(GoalManager(os.environ.get("GOALKIT_STORAGE", "sqlite:///goals.db"), plugins=tokens()))


async def self_check() -> None:
    token = secrets.token_urlsafe(16)
    manager = GoalManager("memory://", plugins=[StaticTokens({token: Principal("demo")})])
    host = build(manager)
    async with (
        host.router.lifespan_context(host),  # what uvicorn does at start-up and shutdown
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=host),
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {token}"},
        ) as client,
    ):
        created = await client.post(
            "/goalkit/api/v1/goals", json={"description": "Find sources, then summarise them"}
        )
        goal = created.json()["data"]
        print(created.status_code, goal["id"], goal["status"])
        events = await client.get(f"/goalkit/api/v1/goals/{goal['id']}/events")
        print([line[7:] for line in events.text.splitlines() if line.startswith("event: ")])
        print((await client.get("/stats")).json())


if __name__ == "__main__":
    anyio.run(self_check)

"""Shared pieces of the HTTP API tests: users, a provider that holds goals, and clients."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
import httpx

import goalkit
import goalkit.asgi
from goalkit import GoalManager, Principal
from goalkit.models import Goal, Step

TOKENS = {
    "alice-token": Principal("alice"),
    "bob-token": Principal("bob"),
    "root-token": Principal("root", admin=True),
}
ALICE = {"Authorization": "Bearer alice-token"}
BOB = {"Authorization": "Bearer bob-token"}
ROOT = {"Authorization": "Bearer root-token"}


class Users:
    """A `goalkit_authenticate` plugin with alice, bob and the admin root."""

    @goalkit.hookimpl
    def goalkit_authenticate(self, token: str) -> Principal | None:
        return TOKENS.get(token)


class HeldProvider:
    """Model ``held``: one step per description line; every step waits for `release`."""

    model = "held"

    def __init__(self) -> None:
        self.gates: defaultdict[str, anyio.Event] = defaultdict(anyio.Event)
        self.started: defaultdict[str, anyio.Event] = defaultdict(anyio.Event)

    def release(self, goal_id: str) -> None:
        self.gates[goal_id].set()

    @goalkit.hookimpl
    def goalkit_model_provider(self, model: str) -> HeldProvider | None:
        return self if model == self.model else None

    async def plan(self, goal: Goal, max_steps: int) -> list[str]:
        return [line for line in goal.description.splitlines() if line.strip()]

    async def run_step(self, goal: Goal, step: Step, previous: Sequence[Step]) -> str:
        self.started[goal.id].set()
        await self.gates[goal.id].wait()
        return f"done {step.index}"


class SlowSink:
    """A `goalkit_event` sink that takes a moment per event: it shows whether sinks drained."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    @goalkit.hookimpl
    async def goalkit_event(self, event: goalkit.Event) -> None:
        await anyio.sleep(0.01)
        self.seen.append((event.goal_id, event.id))


class AnyModel:
    """A provider serving every model name at once (for schemathesis, which invents names)."""

    @goalkit.hookimpl
    def goalkit_model_provider(self, model: str) -> AnyModel | None:
        return self

    async def plan(self, goal: Goal, max_steps: int) -> list[str]:
        return ["only step"]

    async def run_step(self, goal: Goal, step: Step, previous: Sequence[Step]) -> str:
        await anyio.lowlevel.checkpoint()
        return "ok"


def make_manager(*plugins: object) -> GoalManager:
    return GoalManager(
        "memory://", plugins=[Users(), *plugins], entry_points=False, retry_backoff=0
    )


def client(app: Any, root_path: str = "") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def parse_sse(text: str) -> list[dict[str, Any]]:
    """The messages of an event stream: dicts of field lists, comments under ``":"``."""
    messages = []
    for block in text.split("\n\n"):
        if not block:
            continue
        message: dict[str, Any] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            message.setdefault(name, []).append(value.removeprefix(" "))
        messages.append(message)
    return messages


def events_of(text: str) -> list[dict[str, Any]]:
    """The JSON data of each event in an event stream."""
    return [json.loads(m["data"][0]) for m in parse_sse(text) if "data" in m]


async def drive(
    app: Any,
    method: str,
    path: str,
    *,
    headers: Sequence[tuple[bytes, bytes]] = (),
    chunks: Sequence[bytes] | None = None,
    disconnect_after: int | None = None,
    root_path: str = "",
    query: bytes = b"",
) -> tuple[list[dict[str, Any]], int]:
    """Call the ASGI app directly; return the messages it sent and the chunks it read.

    `chunks` is the request body (``more_body`` on all but the last); with
    `disconnect_after`, the client disconnects once that many response messages arrived.
    """
    sent: list[dict[str, Any]] = []
    body = list(chunks or [b""])
    read = 0
    gone = anyio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal read
        if read < len(body):
            read += 1
            return {
                "type": "http.request",
                "body": body[read - 1],
                "more_body": read < len(body),
            }
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if disconnect_after is not None and len(sent) >= disconnect_after:
            gone.set()
        if not message.get("more_body", False) and message["type"] == "http.response.body":
            gone.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": root_path + path,
        "raw_path": (root_path + path).encode(),
        "root_path": root_path,
        "query_string": query,
        "headers": list(headers),
        "server": ("test", 80),
        "client": ("127.0.0.1", 1234),
    }
    await app(scope, receive, send)
    return sent, read


def app_for(manager: GoalManager, **options: Any) -> goalkit.asgi.GoalkitApp:
    return goalkit.asgi.create_app(manager, **options)

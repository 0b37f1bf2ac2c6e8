"""A local model API for the provider tests: real HTTP on 127.0.0.1, no network.

`ProtocolServer` runs a raw ASGI app under uvicorn in a background thread, on a free port,
and speaks the two wire protocols the built-in providers use, the way the real services do:

- ``POST /v1/chat/completions`` (OpenAI and every compatible server): a ``chat.completion``
  object with ``choices`` and ``usage``, or with ``"stream": true`` the SSE chunks ending in
  ``data: [DONE]``;
- ``POST /v1/messages`` (Anthropic): a ``message`` with content blocks (``text``,
  ``tool_use``) and ``usage``, or with ``"stream": true`` the event sequence
  ``message_start … content_block_delta … message_stop``.

Each test scripts it by queueing `Reply` values (status, headers such as ``Retry-After``,
bodies, delays, hangs); with the queue empty it answers plausibly on its own. Every request
is recorded (`Seen`: path, headers, JSON body, arrival and disconnection times), so a test can
check what the client sent and that a cancelled call really dropped its connection.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import anyio
import attrs
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HANG_LIMIT = 30.0
"""A hanging reply gives up after this long, so a broken test cannot hang the suite."""

DEFAULT_PLAN = [
    {"title": "Gather the facts", "description": "Collect what is known."},
    {"title": "Write the answer", "description": "Write it up from the facts."},
]

_ERROR_TYPES = {
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("invalid_request_error", "authentication_error"),
    403: ("invalid_request_error", "permission_error"),
    404: ("invalid_request_error", "not_found_error"),
    422: ("invalid_request_error", "invalid_request_error"),
    429: ("requests", "rate_limit_error"),
    500: ("server_error", "api_error"),
    529: ("server_error", "overloaded_error"),
}


@attrs.define
class Reply:
    """One scripted answer. Without `body` the server renders a success in the protocol of
    the request from `text` (the answer text) or `plan` (step titles, or step objects)."""

    status: int = 200
    text: str | None = None
    plan: list[Any] | None = None
    body: Any = None
    headers: dict[str, str] = attrs.Factory(dict)
    delay: float = 0.0
    hang: bool = False
    usage: tuple[int, int] = (11, 7)
    stall_after: int | None = None
    """Streamed: send this many SSE events, then hang until the client disconnects."""

    @classmethod
    def error(cls, status: int, message: str, **headers: str) -> Reply:
        """An error answer; its body is shaped per protocol when the request arrives."""
        return cls(
            status=status,
            text=message,
            headers={k.replace("_", "-"): v for k, v in headers.items()},
        )


@attrs.define
class Seen:
    """A request as the server received it."""

    path: str
    headers: dict[str, str]
    json: dict[str, Any]
    at: float
    disconnected_at: float | None = None

    @property
    def text(self) -> str:
        """Every message content of the request, joined: what the model was told."""
        parts: list[str] = []
        system = self.json.get("system")
        if isinstance(system, str):
            parts.append(system)
        for message in self.json.get("messages", []):
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(c.get("text", "") for c in content if isinstance(c, dict))
        return "\n".join(parts)

    @property
    def wants_plan(self) -> bool:
        return "response_format" in self.json or "tools" in self.json


class ProtocolServer:
    """The scriptable OpenAI/Anthropic protocol server (see the module docstring)."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[Seen] = []
        self.port = 0
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        """The server's root URL (Anthropic's base URL; OpenAI's is this + ``/v1``)."""
        return f"http://127.0.0.1:{self.port}"

    def enqueue(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def reset(self) -> None:
        self.replies.clear()
        self.requests.clear()

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    @classmethod
    @contextmanager
    def running(cls) -> Iterator[ProtocolServer]:
        """Start a server on a free loopback port; stop it on exit."""
        server = cls()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        server.port = sock.getsockname()[1]
        config = uvicorn.Config(
            server.app,
            interface="asgi3",
            lifespan="off",
            log_level="warning",
            access_log=False,
            ws="none",
            http="h11",
            loop="asyncio",
            timeout_graceful_shutdown=1,
        )
        uv = uvicorn.Server(config)
        thread = threading.Thread(
            target=uv.run, kwargs={"sockets": [sock]}, name="provider test server", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not uv.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the provider test server did not start")
            time.sleep(0.01)
        try:
            yield server
        finally:
            uv.should_exit = True
            thread.join(10)
            sock.close()

    # -- the ASGI app -------------------------------------------------------------------------

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            data = {}
        seen = Seen(scope["path"], headers, data, time.monotonic())
        self.requests.append(seen)
        reply = self.replies.popleft() if self.replies else Reply()
        if reply.hang:
            try:
                await asyncio.wait_for(_disconnected(receive), HANG_LIMIT)
            finally:
                seen.disconnected_at = time.monotonic()
            return
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.stall_after is not None:
            send = _stalling(send, receive, seen, reply.stall_after)
        try:
            if scope["path"] == "/v1/chat/completions":
                await self._openai(seen, reply, send)
            elif scope["path"] == "/v1/messages":
                await self._anthropic(seen, reply, send)
            else:
                await _respond(send, 404, {"error": {"message": f"no route {scope['path']}"}})
        except _ClientGone:
            return

    def _answer_text(self, seen: Seen, reply: Reply) -> str:
        if reply.text is not None:
            return reply.text
        if reply.plan is not None or seen.wants_plan:
            return json.dumps({"steps": _steps(reply.plan or DEFAULT_PLAN)})
        steps = sum(1 for r in self.requests if r.path == seen.path and not r.wants_plan)
        return f"result {steps}"

    async def _openai(self, seen: Seen, reply: Reply, send: Send) -> None:
        model = seen.json.get("model", "unknown")
        if reply.body is not None:
            await _respond(send, reply.status, reply.body, reply.headers)
            return
        if reply.status >= 400:
            kind = _ERROR_TYPES.get(reply.status, ("api_error", "api_error"))[0]
            error = {"message": reply.text, "type": kind, "param": None, "code": None}
            await _respond(send, reply.status, {"error": error}, reply.headers)
            return
        text = self._answer_text(seen, reply)
        ident = f"chatcmpl-{next(self._ids)}"
        created = int(time.time())
        prompt, completion = reply.usage
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if not seen.json.get("stream"):
            await _respond(
                send,
                200,
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text, "refusal": None},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                    "system_fingerprint": "fp_local",
                },
                reply.headers,
            )
            return

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }

        events: list[str] = [json.dumps(chunk({"role": "assistant", "content": ""}, None))]
        events += [json.dumps(chunk({"content": piece}, None)) for piece in _pieces(text)]
        events.append(json.dumps(chunk({}, "stop")))
        if (seen.json.get("stream_options") or {}).get("include_usage"):
            last = chunk({}, None)
            last["choices"], last["usage"] = [], usage
            events.append(json.dumps(last))
        events.append("[DONE]")
        await _stream(send, reply.headers, (f"data: {e}\n\n" for e in events))

    async def _anthropic(self, seen: Seen, reply: Reply, send: Send) -> None:
        model = seen.json.get("model", "unknown")
        if reply.body is not None:
            await _respond(send, reply.status, reply.body, reply.headers)
            return
        if reply.status >= 400:
            kind = _ERROR_TYPES.get(reply.status, ("api_error", "api_error"))[1]
            body = {"type": "error", "error": {"type": kind, "message": reply.text}}
            await _respond(send, reply.status, body, reply.headers)
            return
        ident = f"msg_{next(self._ids):024d}"
        tool = (seen.json.get("tool_choice") or {}).get("name")
        block: dict[str, Any]
        if tool and reply.text is None:
            tool_input = {"steps": _steps(reply.plan or DEFAULT_PLAN)}
            block = {
                "type": "tool_use",
                "id": f"toolu_{ident[4:]}",
                "name": tool,
                "input": tool_input,
            }
            stop = "tool_use"
        else:
            block = {"type": "text", "text": self._answer_text(seen, reply)}
            stop = "end_turn"
        prompt, completion = reply.usage
        message = {
            "id": ident,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [block],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": completion},
        }
        if not seen.json.get("stream"):
            await _respond(send, 200, message, reply.headers)
            return
        start = {**message, "content": [], "stop_reason": None}
        start["usage"] = {"input_tokens": prompt, "output_tokens": 1}
        if block["type"] == "text":
            first = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in _pieces(block["text"])]
        else:
            first = {**block, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": p}
                for p in _pieces(json.dumps(block["input"]))
            ]
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": start}),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": first},
            ),
            ("ping", {"type": "ping"}),
            *(
                ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d})
                for d in deltas
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": completion},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        await _stream(
            send, reply.headers, (f"event: {name}\ndata: {json.dumps(e)}\n\n" for name, e in events)
        )


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port where connections are refused: bound, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until `condition()` holds, failing after `within` seconds."""
    with anyio.fail_after(within):
        # Polled: the server changes what the condition reads from its own thread.
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.01)


def _steps(plan: list[Any]) -> list[dict[str, Any]]:
    return [
        p if isinstance(p, dict) else {"title": p, "description": f"Do this: {p}"} for p in plan
    ]


def _pieces(text: str, size: int = 8) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class _ClientGone(Exception):
    """The client disconnected while a stalled stream waited: stop answering."""


def _stalling(send: Send, receive: Receive, seen: Seen, after: int) -> Send:
    """`send` that passes on `after` body parts, then waits for the client to go away."""
    parts = 0

    async def stalled(message: Message) -> None:
        nonlocal parts
        if message["type"] == "http.response.body" and message.get("more_body"):
            parts += 1
            if parts > after:
                try:
                    await asyncio.wait_for(_disconnected(receive), HANG_LIMIT)
                finally:
                    seen.disconnected_at = time.monotonic()
                raise _ClientGone
        await send(message)

    return stalled


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _raw_headers(headers: dict[str, str], content_type: str) -> list[tuple[bytes, bytes]]:
    raw = [(b"content-type", content_type.encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    return raw


async def _respond(
    send: Send, status: int, body: Any, headers: dict[str, str] | None = None
) -> None:
    if isinstance(body, (bytes, str)):
        payload = body.encode() if isinstance(body, str) else body
        content_type = "text/plain; charset=utf-8"
    else:
        payload = json.dumps(body).encode()
        content_type = "application/json"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": _raw_headers(headers or {}, content_type),
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _stream(send: Send, headers: dict[str, str], events: Iterator[str]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": _raw_headers({"cache-control": "no-cache", **headers}, "text/event-stream"),
        }
    )
    for event in events:
        await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
    await send({"type": "http.response.body", "body": b""})

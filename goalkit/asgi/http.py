"""HTTP plumbing of the ASGI adapter: requests, bodies under a limit, queries, JSON envelopes.

Nothing here knows about goals. A handler raises `HTTPError` (or lets a `GoalkitError`
through) and `send_error` turns it into the error envelope
``{"ok": false, "error": {"code": …, "message": …}}``; `send_json` wraps success data in
``{"ok": true, "data": …}``.

Deliberate divergences from a framework's request object: the body is read at most once,
never past the limit (a chunked upload is refused as soon as it passes `max_body`, without
reading the rest) and within a deadline (a client that trickles its body gets a 408); query
values are decoded strictly as UTF-8 (a bad byte is a 400, not a replacement character); a
query parameter given twice is a 400 rather than "last one wins", and so is a single-valued
header (`Request.header`) sent twice.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, TypeAlias
from urllib.parse import parse_qsl

import anyio

__all__ = [
    "DIGITS",
    "ASGIApp",
    "ClientDisconnected",
    "HTTPError",
    "Message",
    "Receive",
    "Request",
    "Scope",
    "Send",
    "json_bytes",
    "parse_json",
    "send_error",
    "send_json",
]

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_TYPE = b"application/json"
DIGITS = re.compile(r"[0-9]+")
"""ASCII digits only: ``int()`` alone would also take ``"١٢"``, ``" 5"`` or ``"+5"``."""


class HTTPError(Exception):
    """An error answer: status, machine-readable code, message, and extra headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})


def bad_request(field: str, message: str) -> HTTPError:
    """A 400 `invalid_request` naming `field`, its message prefixed with the field name."""
    return HTTPError(400, "invalid_request", f"{field}: {message}", field=field)


class ClientDisconnected(Exception):
    """The client went away before the request body was read: there is no one to answer."""


class Request:
    """The parts of an ASGI HTTP scope a handler needs, plus the body reader."""

    def __init__(self, scope: Scope, receive: Receive, path: str) -> None:
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        self.path = path
        self._headers: dict[str, str] | None = None
        self._repeated: set[str] = set()
        self._query: dict[str, str] | None = None
        self.token: str | None = None
        """The bearer token, once read: kept only to scrub it from log lines."""

    @property
    def headers(self) -> dict[str, str]:
        """Header values by lower-case name (latin-1, as HTTP sends them); repeats joined."""
        if self._headers is None:
            headers: dict[str, str] = {}
            for raw_name, raw_value in self.scope.get("headers", ()):
                name = raw_name.decode("latin-1").lower()
                value = raw_value.decode("latin-1")
                if name in headers:
                    self._repeated.add(name)
                    value = f"{headers[name]}, {value}"
                headers[name] = value
            self._headers = headers
        return self._headers

    def header(self, name: str) -> str | None:
        """The value of a header that may be sent once; a 400 naming it if sent twice."""
        value = self.headers.get(name.lower())
        if name.lower() in self._repeated:
            raise bad_request(name, "given more than once")
        return value

    @property
    def query(self) -> dict[str, str]:
        """Query parameters; raises a 400 for bad UTF-8 or a parameter given twice."""
        if self._query is None:
            raw: bytes = self.scope.get("query_string", b"")
            try:
                text = raw.decode("utf-8")
                pairs = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
            except UnicodeDecodeError:
                raise HTTPError(
                    400, "invalid_request", "the query string is not valid UTF-8"
                ) from None
            query: dict[str, str] = {}
            for name, value in pairs:
                if name in query:
                    raise bad_request(name, "given more than once")
                query[name] = value
            self._query = query
        return self._query

    async def body(self, limit: int, time_limit: float = math.inf) -> bytes:
        """The whole body, refused with a 413 as soon as it is known to exceed `limit` bytes,
        and with a 408 if it has not all arrived within `time_limit` seconds.

        A declared ``Content-Length`` over the limit is refused before reading anything; a
        body without one (chunked) is read chunk by chunk and abandoned at the first chunk
        that takes it past the limit.
        """
        declared = self.header("content-length")
        if declared is not None:
            declared = declared.strip()
            if len(declared) > 20 or not DIGITS.fullmatch(declared):
                raise bad_request("Content-Length", "must be a non-negative integer")
            if int(declared) > limit:
                raise self._unread(
                    413, "payload_too_large", f"the request body exceeds {limit} bytes"
                )
        chunks: list[bytes] = []
        size = 0
        try:
            with anyio.fail_after(time_limit):
                while True:
                    message = await self.receive()
                    if message["type"] == "http.disconnect":
                        raise ClientDisconnected
                    if message["type"] != "http.request":
                        continue
                    chunk: bytes = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise self._unread(
                            413, "payload_too_large", f"the request body exceeds {limit} bytes"
                        )
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            raise self._unread(
                408,
                "request_timeout",
                f"the request body did not arrive within {time_limit:g} seconds; "
                f"{size} bytes came in time",
            ) from None

    def _unread(self, status: int, code: str, message: str) -> HTTPError:
        """An error answered while part of the body is still unread.

        Over HTTP/1.x the rest would follow the answer on the same connection, and servers
        such as uvicorn keep reading (and discarding) it to reuse the connection: a client
        could stream 100 MB into a refused request. ``Connection: close`` makes the server
        close instead. HTTP/2 and later forbid the header (RFC 9113 §8.2.2) and cancel just
        the stream, so it is sent only over HTTP/1.x.
        """
        headers = (
            {"connection": "close"}
            if self.scope.get("http_version", "1.1") in ("1.0", "1.1")
            else {}
        )
        return HTTPError(status, code, message, headers=headers)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise bad_request(key, "given more than once")
        data[key] = value
    return data


def parse_json(body: bytes) -> Any:
    """Decode a JSON request body, strictly: UTF-8, no NaN/Infinity, no repeated keys.

    Every failure is a 400 `invalid_request`, including nesting too deep for the parser.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, "invalid_request", "the body is not valid UTF-8") from None
    try:
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except HTTPError:
        raise
    except RecursionError:
        raise HTTPError(400, "invalid_request", "the body is nested too deeply") from None
    except ValueError as exc:
        # json.JSONDecodeError's message gives a line and column, never the text itself.
        raise HTTPError(400, "invalid_request", f"the body is not valid JSON: {exc}") from None


def json_bytes(payload: Any) -> bytes:
    """Compact UTF-8 JSON, one line."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


async def send_json(
    send: Send,
    status: int,
    payload: Any,
    *,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Send a complete JSON response."""
    body = json_bytes(payload)
    raw_headers = [
        (b"content-type", JSON_TYPE),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"cache-control", b"no-store"),
    ]
    raw_headers.extend(
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in (headers or {}).items()
    )
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: Send, error: HTTPError) -> None:
    """Send `error` as an error envelope."""
    detail: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.field is not None:
        detail["field"] = error.field
    await send_json(send, error.status, {"ok": False, "error": detail}, headers=error.headers)

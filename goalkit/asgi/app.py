"""The ASGI application: lifespan, routing, authentication and the goal handlers.

Routing is a table of path patterns to ``{method: handler}``, resolved against
``scope["path"]`` with ``scope["root_path"]`` stripped when the path starts with it, so the
same app works served alone and mounted at any prefix. Per request the order is: route (404),
method (405 with ``Allow``), bearer token (401), then the handler: its own checks, the goal
lookup (404) and ownership (403). Everything a handler raises becomes an error envelope;
anything unexpected is logged and answered with a generic 500, never a traceback.

The app uses `GoalManager`'s public methods only: `authenticate`, `create`, `get`, `list`,
`cancel` and `events`.

Deliberate divergences from what a web framework would do: an unknown query parameter is a
400 naming it, like an unknown body field (a typo such as ``?stauts=`` must not silently list
everything), and so is a known one given twice; no CORS and no ``OPTIONS``/``HEAD`` handling (both are a 405; put the host's CORS
middleware in front); the request body is validated here against exactly the limits the
OpenAPI document states, before `GoalManager.create` normalises it (strips text, drops
duplicate tags), so a body the document calls invalid is never accepted.
"""

from __future__ import annotations

import inspect
import logging
import re
import traceback
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias

from goalkit import (
    Forbidden,
    Goal,
    GoalkitError,
    GoalManager,
    InvalidGoal,
    LimitExceeded,
    NotAuthenticated,
    Principal,
)
from goalkit.asgi import openapi
from goalkit.asgi.http import (
    JSON_TYPE,
    ClientDisconnected,
    HTTPError,
    Receive,
    Request,
    Scope,
    Send,
    bad_request,
    json_bytes,
    parse_json,
    send_error,
    send_json,
)
from goalkit.asgi.lifespan import Opener
from goalkit.asgi.openapi import IDEMPOTENCY_KEY_PATTERN, LAST_EVENT_ID_PATTERN, MAX_INTEGER
from goalkit.asgi.sse import OpenStreams, send_event_stream
from goalkit.models import (
    MAX_DESCRIPTION,
    MAX_IDEMPOTENCY_KEY,
    MAX_LIMIT,
    MAX_MODEL_LENGTH,
    MAX_OWNER_LENGTH,
    MAX_RETRIES,
    MAX_STEPS,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MODES,
    STATUSES,
)

__all__ = ["Authenticate", "GoalkitApp"]

log = logging.getLogger("goalkit.asgi")

Authenticate: TypeAlias = Callable[[str], "Principal | Awaitable[Principal | None] | None"]
"""A function from a bearer token to its principal (or None), possibly async."""

Handler: TypeAlias = Callable[[Request, Send, Mapping[str, str]], Awaitable[None]]


# RFC 6750 b64token: what may follow "Bearer ".
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_DIGITS = re.compile(r"[0-9]+")
_EVENT_ID = re.compile(LAST_EVENT_ID_PATTERN)
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_NOT_BLANK = re.compile(r"\S")

FIELDS = frozenset(
    {"description", "model", "mode", "max_steps", "max_retries", "tags", "max_tokens"}
)
SERVER_OWNED = frozenset(
    {
        "id",
        "owner",
        "status",
        "phase",
        "workflow_id",
        "steps_completed",
        "total_steps",
        "current_step",
        "result",
        "error",
        "created_at",
        "updated_at",
        "completed_at",
        "steps",
        "last_event_id",
    }
)

QUERY_PARAMETERS = {
    "_list": frozenset({"status", "tag", "limit", "offset", "owner"}),
    "_events": frozenset({"after"}),
}
"""The query parameters each handler reads; any other is a 400."""

_CHALLENGE = {"www-authenticate": "Bearer"}


class GoalkitApp:
    """The goalkit HTTP API as an ASGI 3 application; made by `goalkit.asgi.create_app`."""

    def __init__(
        self,
        manager: GoalManager,
        *,
        authenticate: Authenticate | None = None,
        keepalive: float = 15.0,
        max_body: int = 64 * 1024,
        sse_retry_ms: int = 3000,
        send_timeout: float | None = 60.0,
        max_streams_per_user: int | None = 10,
    ) -> None:
        if not keepalive > 0:
            raise ValueError("keepalive must be a positive number of seconds")
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 0:
            raise ValueError("max_body must be a non-negative integer")
        if isinstance(sse_retry_ms, bool) or not isinstance(sse_retry_ms, int) or sse_retry_ms < 0:
            raise ValueError("sse_retry_ms must be a non-negative integer")
        if send_timeout is not None and not send_timeout > 0:
            raise ValueError("send_timeout must be positive or None")
        if max_streams_per_user is not None and (
            isinstance(max_streams_per_user, bool)
            or not isinstance(max_streams_per_user, int)
            or max_streams_per_user < 1
        ):
            raise ValueError("max_streams_per_user must be a positive integer or None")
        self.manager = manager
        self.keepalive = keepalive
        self.max_body = max_body
        self.sse_retry_ms = sse_retry_ms
        self.send_timeout = send_timeout
        self._authenticate = authenticate
        self._opener = Opener(manager)
        # Token budgets reach the manager only once it takes them (SPEC §4 lists the field).
        self.budgets = "max_tokens" in inspect.signature(manager.create).parameters
        # Refused streams (429, 503) are told to come back after the SSE reconnection delay.
        self._streams = OpenStreams(
            max_per_user=max_streams_per_user, retry_after=max(1, -(-sse_retry_ms // 1000))
        )
        self._document = json_bytes(openapi.document(budgets=self.budgets))
        goal_path = r"/api/v1/goals/(?P<goal_id>[^/]+)"
        self._routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
            (re.compile(r"/api/v1/goals"), {"GET": self._list, "POST": self._create}),
            (re.compile(goal_path), {"GET": self._get, "DELETE": self._cancel}),
            (re.compile(goal_path + "/events"), {"GET": self._events}),
            (re.compile(r"/api/v1/openapi\.json"), {"GET": self._openapi}),
        ]

    def drain(self) -> None:
        """End every open event stream now, e.g. when the server begins to shut down.

        Servers wait for open responses before they stop; an SSE response would otherwise
        hold the shutdown for its whole grace period. Each stream ends cleanly (its final
        empty body is sent) and clients reconnect with their last id; from now on a new
        stream is refused with 503 and ``Retry-After``.
        """
        self._streams.drain()

    async def close(self) -> None:
        """Leave the manager if the app opened it on a first request (else do nothing).

        A host that gives no `lifespan` awaits this in its shutdown, so that the manager is
        left cleanly (event sinks drained) before the event loop ends; raises what leaving
        the manager raised.
        """
        await self._opener.close()

    # -- ASGI -----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            if (await receive())["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": 1000})
        else:
            raise RuntimeError(f"goalkit.asgi does not handle {kind!r} connections")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        entered = False
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if not self.manager.is_open:
                        await self.manager.__aenter__()
                        entered = True
                except Exception as exc:
                    log.exception("goalkit failed to start")
                    await send({"type": "lifespan.startup.failed", "message": _describe(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    if entered:
                        await self.manager.__aexit__(None, None, None)
                except Exception as exc:
                    log.exception("goalkit failed to shut down cleanly")
                    await send({"type": "lifespan.shutdown.failed", "message": _describe(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: dict[str, Any] | Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        request = Request(scope, receive, route_path(scope))
        try:
            await self._dispatch(request, tracked)
            return
        except ClientDisconnected:
            return
        except HTTPError as exc:
            error = exc
        except GoalkitError as exc:
            error = _from_goalkit(exc, request)
        except Exception:
            log.exception("unhandled error answering %s %s", request.method, request.path)
            error = _internal()
        if started:
            return  # the status line went out already; the server ends the response
        await send_error(tracked, error)

    async def _dispatch(self, request: Request, send: Send) -> None:
        for pattern, methods in self._routes:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            handler = methods.get(request.method)
            if handler is None:
                allow = ", ".join(methods)
                raise HTTPError(
                    405,
                    "method_not_allowed",
                    f"{request.method} is not allowed here; allowed: {allow}",
                    headers={"allow": allow},
                )
            known = QUERY_PARAMETERS.get(handler.__name__, frozenset())
            for name in request.query:
                if name not in known:
                    raise bad_request(name, "unknown query parameter")
            await handler(request, send, match.groupdict())
            return
        raise HTTPError(404, "not_found", f"no such path: {request.path}")

    # -- authentication -------------------------------------------------------------------------

    async def _principal(self, request: Request) -> Principal:
        header = request.headers.get("authorization")
        if header is None:
            raise _unauthorized("missing credentials: send 'Authorization: Bearer <token>'")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not _TOKEN.fullmatch(token):
            raise _unauthorized("the Authorization header must be 'Bearer <token>'")
        principal = await self._resolve(token)
        if principal is None:
            raise _unauthorized("unknown or revoked token")
        await self._opener.ensure_open()
        return principal

    async def _resolve(self, token: str) -> Principal | None:
        try:
            if self._authenticate is None:
                answer: object = await self.manager.authenticate(token)
            else:
                answer = self._authenticate(token)
                if inspect.isawaitable(answer):
                    answer = await answer
        except GoalkitError as exc:
            if exc.status == 401:
                raise _unauthorized(exc.message) from None
            _log_scrubbed(exc, token)
            raise _internal() from None
        except Exception as exc:
            _log_scrubbed(exc, token)
            raise _internal() from None
        if answer is not None and not isinstance(answer, Principal):
            log.error("authenticate returned a %s, not a Principal", type(answer).__name__)
            raise _internal()
        return answer

    async def _goal(self, principal: Principal, goal_id: str) -> Goal:
        goal = await self.manager.get(goal_id)
        if not principal.admin and goal.owner != principal.user:
            raise Forbidden(f"goal {goal_id!r} belongs to another user")
        return goal

    # -- handlers ---------------------------------------------------------------------------------

    async def _openapi(self, request: Request, send: Send, params: Mapping[str, str]) -> None:
        body = self._document
        root = request.scope.get("root_path") or ""
        if root:
            # Mounted: tell clients (schemathesis, Swagger UI) where the paths really are.
            document = openapi.document(budgets=self.budgets)
            document["servers"] = [{"url": root}]
            body = json_bytes(document)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", JSON_TYPE),
                    (b"content-length", str(len(body)).encode("ascii")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _create(self, request: Request, send: Send, params: Mapping[str, str]) -> None:
        principal = await self._principal(request)
        _require_json(request.headers.get("content-type"))
        data = parse_json(await request.body(self.max_body))
        if not isinstance(data, dict):
            raise bad_request("body", "must be a JSON object")
        fields = goal_fields(data, budgets=self.budgets)
        key = request.headers.get("idempotency-key")
        if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
            raise bad_request(
                "Idempotency-Key",
                f"must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters",
            )
        goal = await self.manager.create(**fields, owner=principal.user, idempotency_key=key)
        location = f"{request.scope.get('root_path') or ''}/api/v1/goals/{goal.id}"
        await send_json(
            send, 201, {"ok": True, "data": goal.to_dict()}, headers={"location": location}
        )

    async def _list(self, request: Request, send: Send, params: Mapping[str, str]) -> None:
        principal = await self._principal(request)
        query = request.query
        status = query.get("status")
        if status is not None and status not in STATUSES:
            raise bad_request("status", f"must be one of {', '.join(STATUSES)}")
        tag = query.get("tag")
        if tag is not None and not 1 <= len(tag) <= MAX_TAG_LENGTH:
            raise bad_request("tag", f"must be 1 to {MAX_TAG_LENGTH} characters")
        limit = _int_param(query, "limit", 50, 1, MAX_LIMIT)
        offset = _int_param(query, "offset", 0, 0, MAX_INTEGER)
        owner = query.get("owner")
        if owner is not None and not 1 <= len(owner) <= MAX_OWNER_LENGTH:
            raise bad_request("owner", f"must be 1 to {MAX_OWNER_LENGTH} characters")
        if not principal.admin:
            if owner is not None and owner != principal.user:
                raise Forbidden("only admins may list other users' goals")
            owner = principal.user
        page = await self.manager.list(
            owner=owner, status=status, tag=tag, limit=limit, offset=offset
        )
        await send_json(
            send,
            200,
            {
                "ok": True,
                "data": [goal.to_dict(full=False) for goal in page.items],
                "meta": {"total": page.total, "limit": page.limit, "offset": page.offset},
            },
        )

    async def _get(self, request: Request, send: Send, params: Mapping[str, str]) -> None:
        principal = await self._principal(request)
        goal = await self._goal(principal, params["goal_id"])
        await send_json(send, 200, {"ok": True, "data": goal.to_dict()})

    async def _cancel(self, request: Request, send: Send, params: Mapping[str, str]) -> None:
        principal = await self._principal(request)
        goal = await self._goal(principal, params["goal_id"])
        goal = await self.manager.cancel(goal.id)
        data = {
            "id": goal.id,
            "status": goal.status,
            "steps_completed": goal.steps_completed,
            "total_steps": goal.total_steps,
        }
        await send_json(send, 200, {"ok": True, "data": data})

    async def _events(self, request: Request, send: Send, params: Mapping[str, str]) -> None:
        principal = await self._principal(request)
        after = _int_param(request.query, "after", 0, 0, MAX_INTEGER)
        header = request.headers.get("last-event-id")
        if header:  # an empty one is no id at all (EventSource never sends one)
            if not _EVENT_ID.fullmatch(header):
                raise bad_request(
                    "Last-Event-ID", "must be a non-negative integer of at most 15 digits"
                )
            after = int(header)
        goal = await self._goal(principal, params["goal_id"])
        if goal.done and after >= goal.last_event_id:
            # Nothing will ever come: 204 is what tells a browser's EventSource to stop.
            # no-store: a cached 204 would stop a client that reconnects with an older id.
            headers = [(b"cache-control", b"no-store")]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        with self._streams.admit(principal.user):
            await send_event_stream(
                send,
                request.receive,
                self.manager.events(goal.id, after=after),
                retry_ms=self.sse_retry_ms,
                keepalive=self.keepalive,
                send_timeout=self.send_timeout,
                streams=self._streams,
            )


# -- request checks -------------------------------------------------------------------------------


def route_path(scope: Scope) -> str:
    """The request path relative to where the app is mounted (``root_path`` stripped)."""
    path: str = scope.get("path") or "/"
    root: str = scope.get("root_path") or ""
    if root and (path == root or path.startswith(root.rstrip("/") + "/")):
        path = path[len(root.rstrip("/")) :]
    return path or "/"


def _require_json(content_type: str | None) -> None:
    if content_type is not None:
        media, *parameters = content_type.split(";")
        if media.strip().lower() == "application/json":
            for parameter in parameters:
                name, _, value = parameter.partition("=")
                if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
                    "utf-8",
                    "utf8",
                ):
                    break
            else:
                return
    raise HTTPError(
        415,
        "unsupported_media_type",
        "the body must be JSON: send 'Content-Type: application/json'",
    )


def _integer(name: str, text: str, low: int, high: int) -> int:
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise bad_request(name, f"must be an integer from {low} to {high}")
    return int(text)


def _int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    return default if text is None else _integer(name, text, low, high)


def _unicode(name: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\\ud800") is valid JSON, not valid text
        raise bad_request(name, "must be valid Unicode text") from None


def _text(data: Mapping[str, Any], name: str, max_length: int) -> str:
    value = data[name]
    if not isinstance(value, str):
        raise bad_request(name, "must be a string")
    _unicode(name, value)
    if not 1 <= len(value) <= max_length or not _NOT_BLANK.search(value):
        raise bad_request(name, f"must be 1 to {max_length} characters, not all blank")
    return value


def _whole(data: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = data[name]
    # JSON has one number type: 5.0 is the integer 5 (as JSON Schema says), True is not.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_request(name, f"must be an integer from {low} to {high}")
    return value


def goal_fields(data: Mapping[str, Any], *, budgets: bool = False) -> dict[str, Any]:
    """The keyword arguments of `GoalManager.create` from a request body, or a 400.

    Only the creation fields are accepted: a server-owned one (``owner``, ``status``, ``id``
    …) or an unknown one is refused by name, so a client can never set who owns a goal.
    """
    for name in data:
        if name in SERVER_OWNED:
            raise bad_request(name, "is set by the server and may not be given")
        if name not in FIELDS:
            raise bad_request(name, "unknown field")
    if "description" not in data:
        raise bad_request("description", "is required")
    fields: dict[str, Any] = {"description": _text(data, "description", MAX_DESCRIPTION)}
    if "model" in data:
        fields["model"] = _text(data, "model", MAX_MODEL_LENGTH)
    if "mode" in data:
        if data["mode"] not in MODES:
            raise bad_request("mode", f"must be one of {', '.join(MODES)}")
        fields["mode"] = data["mode"]
    if "max_steps" in data:
        fields["max_steps"] = _whole(data, "max_steps", 1, MAX_STEPS)
    if "max_retries" in data:
        fields["max_retries"] = _whole(data, "max_retries", 0, MAX_RETRIES)
    if "tags" in data:
        tags = data["tags"]
        if not isinstance(tags, list) or len(tags) > MAX_TAGS:
            raise bad_request("tags", f"must be a list of at most {MAX_TAGS} strings")
        for i, tag in enumerate(tags):
            if (
                not isinstance(tag, str)
                or not 1 <= len(tag) <= MAX_TAG_LENGTH
                or not _NOT_BLANK.search(tag)
            ):
                raise bad_request(
                    "tags",
                    f"item {i} must be a string of 1 to {MAX_TAG_LENGTH} characters, not all blank",
                )
            _unicode("tags", tag)
        fields["tags"] = tags
    if data.get("max_tokens") is not None:
        budget = _whole(data, "max_tokens", 1, MAX_INTEGER)
        if not budgets:
            raise bad_request("max_tokens", "token budgets are not supported by this server")
        fields["max_tokens"] = budget
    return fields


# -- errors -----------------------------------------------------------------------------------------


def _unauthorized(message: str) -> HTTPError:
    return HTTPError(401, NotAuthenticated.code, message, headers=_CHALLENGE)


def _internal() -> HTTPError:
    return HTTPError(500, "internal_error", "the server could not answer this request; see its log")


def _from_goalkit(exc: GoalkitError, request: Request) -> HTTPError:
    if exc.status >= 500:
        # Storage and plugin failures: their messages may name files or hosts; log, don't tell.
        log.error("%s answering %s %s: %s", type(exc).__name__, request.method, request.path, exc)
        return _internal()
    headers = _CHALLENGE if exc.status == 401 else None
    if isinstance(exc, LimitExceeded):
        headers = {"retry-after": str(exc.retry_after)}
    field = exc.field if isinstance(exc, InvalidGoal) else None
    return HTTPError(exc.status, exc.code, exc.message, field=field, headers=headers)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _log_scrubbed(exc: BaseException, token: str) -> None:
    # An authenticate hook's exception may quote the token; it never reaches the log.
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    log.error("authenticating a request failed:\n%s", text.replace(token, "<token>"))

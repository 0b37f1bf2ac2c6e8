"""The ASGI application: lifespan, routing, authentication and the goal handlers.

Routing follows the table in `goalkit.asgi.routes` (the one the OpenAPI document is written
from), resolved against ``scope["path"]`` with ``scope["root_path"]`` stripped when the path
starts with it, so the same app works served alone and mounted at any prefix. Per request the
order is: route (404, also for a goal id over 64 characters), method (405 with ``Allow``),
bearer token (401, or 403 if the authenticate hook refuses the token), query and header
parameters (400), then the handler: the body (408, 413, 415, 400), the goal lookup (404) and
ownership (403). Authentication comes before any parameter check, so an anonymous caller
learns nothing about what a request would have done. Everything a handler raises becomes an
error envelope; anything unexpected is logged (with the request's token scrubbed) and
answered with a generic 500, never a traceback.

The app uses `GoalManager`'s public methods only: `authenticate`, `create`, `get`, `list`,
`cancel` and `events`.

Deliberate divergences from what a web framework would do: an unknown query parameter is a
400 naming it, like an unknown body field (a typo such as ``?stauts=`` must not silently list
everything), and so is a known one given twice; no CORS and no ``OPTIONS``/``HEAD`` handling (both are a 405; put the host's CORS
middleware in front); the request body's values are checked by `GoalManager.create` itself
(`goalkit.models.validate_goal_spec`, whose rules the OpenAPI document states exactly), this
layer adding only what is particular to JSON: unknown and server-owned fields, ``null``, and
``5.0`` being the integer 5.
"""

from __future__ import annotations

import inspect
import logging
import re
import traceback
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias
from urllib.parse import quote

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
from goalkit.asgi.routes import ROUTES, Operation
from goalkit.asgi.sse import OpenStreams, send_event_stream
from goalkit.auth import TOKEN_SYNTAX

__all__ = ["Authenticate", "GoalkitApp"]

log = logging.getLogger("goalkit.asgi")

Authenticate: TypeAlias = Callable[[str], "Principal | Awaitable[Principal | None] | None"]
"""A function from a bearer token to its principal (or None), possibly async."""

Handler: TypeAlias = Callable[[Request, Send, Principal, Mapping[str, Any]], Awaitable[None]]
"""An operation's handler: the request, its caller, and its path, query and header
parameters by name, already checked (absent ones hold their default)."""

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

_CHALLENGE = {"www-authenticate": "Bearer"}
_TOKEN_REFUSED = "unknown or revoked token"
"""The one answer for a token that is not accepted, whatever the reason: an authenticate
hook's own message may quote the token, and differing answers would help a guesser."""
_TOKEN_FORBIDDEN = "this token may not use this API"
_SHOWN_PATH = 100
"""The longest path repeated in a 404's message."""


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
        body_timeout: float = 10.0,
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
        if isinstance(body_timeout, bool) or not body_timeout > 0:
            raise ValueError("body_timeout must be a positive number of seconds")
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
        self.body_timeout = body_timeout
        self._authenticate = authenticate
        self._opener = Opener(manager)
        # Refused streams (429, 503) are told to come back after the SSE reconnection delay.
        self._streams = OpenStreams(
            max_per_user=max_streams_per_user, retry_after=max(1, -(-sse_retry_ms // 1000))
        )
        self._document = json_bytes(openapi.document())
        self._handlers: dict[str, Handler] = {
            "listGoals": self._list,
            "createGoal": self._create,
            "getGoal": self._get,
            "cancelGoal": self._cancel,
            "goalEvents": self._events,
        }

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
        except Exception as exc:
            _log_failure(f"unhandled error answering {request.method} {request.path}", exc, request)
            error = _internal()
        if started:
            return  # the status line went out already; the server ends the response
        await send_error(tracked, error)

    async def _dispatch(self, request: Request, send: Send) -> None:
        for route in ROUTES:
            match = route.pattern.fullmatch(request.path)
            if match is None:
                continue
            args = {p.name: p.kind.parse(p.name, match[p.name]) for p in route.params}
            operation = route.operation(request.method)
            if operation is None:
                raise HTTPError(
                    405,
                    "method_not_allowed",
                    f"{request.method} is not allowed here; allowed: {route.allow}",
                    headers={"allow": route.allow},
                )
            if operation.public:
                _parameters(request, operation)  # it takes none: any is a 400, as elsewhere
                await self._openapi(request, send)
                return
            principal = await self._principal(request)
            args.update(_parameters(request, operation))
            await self._handlers[operation.operation_id](request, send, principal, args)
            return
        path = request.path
        shown = path if len(path) <= _SHOWN_PATH else path[:_SHOWN_PATH] + "…"
        raise HTTPError(404, "not_found", f"no such path: {shown}")

    # -- authentication -------------------------------------------------------------------------

    async def _principal(self, request: Request) -> Principal:
        header = request.headers.get("authorization")
        if header is None:
            raise _unauthorized("missing credentials: send 'Authorization: Bearer <token>'")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not TOKEN_SYNTAX.fullmatch(token):
            raise _unauthorized("the Authorization header must be 'Bearer <token>'")
        request.token = token
        principal = await self._resolve(request, token)
        if principal is None:
            raise _unauthorized(_TOKEN_REFUSED)
        await self._opener.ensure_open()
        return principal

    async def _resolve(self, request: Request, token: str) -> Principal | None:
        try:
            if self._authenticate is None:
                answer: object = await self.manager.authenticate(token)
            else:
                answer = self._authenticate(token)
                if inspect.isawaitable(answer):
                    answer = await answer
        except GoalkitError as exc:
            # A hook refusing the token: its message may quote the token, so the answer is
            # fixed text and the message goes to the log, scrubbed.
            if exc.status == 401:
                log.info("a token was refused: %s", scrub(exc.message, token))
                raise _unauthorized(_TOKEN_REFUSED) from None
            if exc.status == 403:
                log.info("a token was refused access: %s", scrub(exc.message, token))
                raise HTTPError(403, Forbidden.code, _TOKEN_FORBIDDEN) from None
            _log_failure("authenticating a request failed", exc, request)
            raise _internal() from None
        except Exception as exc:
            _log_failure("authenticating a request failed", exc, request)
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

    async def _openapi(self, request: Request, send: Send) -> None:
        body = self._document
        root = request.scope.get("root_path") or ""
        if root:
            # Mounted: tell clients (schemathesis, Swagger UI) where the paths really are.
            document = openapi.document()
            document["servers"] = [{"url": _url_path(root)}]
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

    async def _create(
        self, request: Request, send: Send, principal: Principal, params: Mapping[str, Any]
    ) -> None:
        _require_json(request.header("Content-Type"))
        data = parse_json(await request.body(self.max_body, self.body_timeout))
        if not isinstance(data, dict):
            raise bad_request("body", "must be a JSON object")
        fields = goal_fields(data)
        goal = await self.manager.create(
            **fields, owner=principal.user, idempotency_key=params["Idempotency-Key"]
        )
        location = f"{_url_path(request.scope.get('root_path') or '')}/api/v1/goals/{goal.id}"
        await send_json(
            send, 201, {"ok": True, "data": goal.to_dict()}, headers={"location": location}
        )

    async def _list(
        self, request: Request, send: Send, principal: Principal, params: Mapping[str, Any]
    ) -> None:
        owner = params["owner"]
        if not principal.admin:
            if owner is not None and owner != principal.user:
                raise Forbidden("only admins may list other users' goals")
            owner = principal.user
        page = await self.manager.list(
            owner=owner,
            status=params["status"],
            tag=params["tag"],
            limit=params["limit"],
            # Sent or not, not its default: an offset beside a cursor is a 400.
            offset=params["offset"] if "offset" in request.query else None,
            cursor=params["cursor"],
        )
        meta = {
            "total": page.total,
            "limit": page.limit,
            "offset": page.offset,
            "next_cursor": page.next_cursor,
        }
        await send_json(
            send,
            200,
            {"ok": True, "data": [goal.to_dict(full=False) for goal in page.items], "meta": meta},
        )

    async def _get(
        self, request: Request, send: Send, principal: Principal, params: Mapping[str, Any]
    ) -> None:
        goal = await self._goal(principal, params["goal_id"])
        await send_json(send, 200, {"ok": True, "data": goal.to_dict()})

    async def _cancel(
        self, request: Request, send: Send, principal: Principal, params: Mapping[str, Any]
    ) -> None:
        goal = await self._goal(principal, params["goal_id"])
        goal = await self.manager.cancel(goal.id)
        data = {
            "id": goal.id,
            "status": goal.status,
            "steps_completed": goal.steps_completed,
            "total_steps": goal.total_steps,
        }
        await send_json(send, 200, {"ok": True, "data": data})

    async def _events(
        self, request: Request, send: Send, principal: Principal, params: Mapping[str, Any]
    ) -> None:
        after = params["after"] if params["Last-Event-ID"] is None else params["Last-Event-ID"]
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


def _parameters(request: Request, operation: Operation) -> dict[str, Any]:
    """The operation's query and header parameters, checked; absent ones hold their default."""
    params = {p.name: p for p in operation.params if p.where == "query"}
    for name in request.query:
        if name not in params:
            raise bad_request(name, "unknown query parameter")
    values: dict[str, Any] = {}
    for param in operation.params:
        if param.where == "query":
            text = request.query.get(param.name)
        else:
            text = request.header(param.name)
            if text == "" and param.name == "Last-Event-ID":
                text = None  # an empty one is no id at all (EventSource never sends one)
        values[param.name] = param.default if text is None else param.kind.parse(param.name, text)
    return values


def _url_path(path: str) -> str:
    """`path` (a decoded ``root_path``) percent-encoded for a header or URL: UTF-8, and
    only the characters a path segment may hold left as they are."""
    return quote(path, safe="/!$&'()*+,;=:@")


_INTEGRAL = frozenset({"max_steps", "max_retries", "max_tokens"})


def goal_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `GoalManager.create` from a request body, or a 400.

    Only what is particular to JSON is checked here; `GoalManager.create` checks the values
    (`goalkit.models.validate_goal_spec`). Only the creation fields are accepted: a
    server-owned one (``owner``, ``status``, ``id`` …) or an unknown one is refused by name,
    so a client can never set who owns a goal. ``null`` is refused (in Python, None means
    "the default"; in the document, these fields are not nullable), except for
    ``max_tokens``, where it means no budget, as when the field is left out; an integral number
    such as ``5.0`` is the integer 5, as JSON Schema counts it.
    """
    for name in data:
        if name in SERVER_OWNED:
            raise bad_request(name, "is set by the server and may not be given")
        if name not in FIELDS:
            raise bad_request(name, "unknown field")
    if "description" not in data:
        raise bad_request("description", "is required")
    fields: dict[str, Any] = {}
    for name, value in data.items():
        if name == "max_tokens" and value is None:
            continue  # no budget
        if value is None:
            raise bad_request(name, "must not be null")
        if name in _INTEGRAL and isinstance(value, float) and value.is_integer():
            value = int(value)
        fields[name] = value
    return fields


# -- errors -----------------------------------------------------------------------------------------


def _unauthorized(message: str) -> HTTPError:
    return HTTPError(401, NotAuthenticated.code, message, headers=_CHALLENGE)


def _internal() -> HTTPError:
    return HTTPError(500, "internal_error", "the server could not answer this request; see its log")


def _from_goalkit(exc: GoalkitError, request: Request) -> HTTPError:
    if exc.status >= 500:
        # Storage and plugin failures: their messages may name files or hosts; log, don't tell.
        message = f"{type(exc).__name__} answering {request.method} {request.path}: {exc}"
        log.error("%s", message if request.token is None else scrub(message, request.token))
        return _internal()
    headers = _CHALLENGE if exc.status == 401 else None
    if isinstance(exc, LimitExceeded):
        headers = {"retry-after": str(exc.retry_after)}
    field = exc.field if isinstance(exc, InvalidGoal) else None
    return HTTPError(exc.status, exc.code, exc.message, field=field, headers=headers)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def scrub(text: str, token: str) -> str:
    """`text` with every copy of `token` replaced by ``<token>``: as is, and percent-encoded
    in any mix of escaped characters and either hex case (``%2B``, ``%2b``, ``+`` as a
    space), as URLs, form bodies and HTTP client errors quote it."""
    parts = []
    for char in token:
        options = [re.escape(char), f"%(?i:{ord(char):02x})"]
        if char == "+":
            options.append(" ")
        parts.append(f"(?:{'|'.join(options)})")
    return re.sub("".join(parts), "<token>", text)


def _log_failure(message: str, exc: BaseException, request: Request) -> None:
    # An exception may quote the request's token (an authenticate hook's, above all); the
    # traceback is formatted here so that it can be scrubbed before it reaches any handler.
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if request.token is not None:
        text = scrub(text, request.token)
        message = scrub(message, request.token)
    log.error("%s\n%s", message, text.rstrip())

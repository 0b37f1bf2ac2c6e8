"""The goalkit HTTP API as a pure ASGI 3 application (no web framework).

    import goalkit.asgi
    from goalkit import GoalManager

    manager = GoalManager("sqlite:///goals.db")
    app = goalkit.asgi.create_app(manager)           # serve alone: uvicorn module:app

    # or mounted in a host, which enters the manager in its own lifespan:
    host = FastAPI(lifespan=goalkit.asgi.lifespan(manager))
    host.mount("/goalkit", app)

Modules, one per noun: `app` (lifespan, routing, auth, handlers), `http` (request reading,
envelopes, errors), `sse` (the event stream response), `openapi` (the OpenAPI document),
`lifespan` (keeping the manager open for a host, or on the first request).
"""

from __future__ import annotations

from goalkit import GoalManager
from goalkit.asgi.app import Authenticate, GoalkitApp
from goalkit.asgi.http import ASGIApp
from goalkit.asgi.lifespan import ManagerLifespan, lifespan
from goalkit.asgi.openapi import document as openapi_document

__all__ = [
    "ASGIApp",
    "Authenticate",
    "GoalkitApp",
    "ManagerLifespan",
    "create_app",
    "lifespan",
    "openapi_document",
]


def create_app(
    manager: GoalManager,
    *,
    authenticate: Authenticate | None = None,
    keepalive: float = 15.0,
    max_body: int = 64 * 1024,
    sse_retry_ms: int = 3000,
    send_timeout: float | None = 60.0,
    body_timeout: float = 10.0,
    max_streams_per_user: int | None = 10,
) -> GoalkitApp:
    """Return the HTTP API of `manager` as an ASGI 3 application.

    Served alone, the app opens and closes the manager through the ASGI lifespan. Mounted in
    a host (which does not forward lifespan), give the host ``lifespan=lifespan(manager)``;
    failing that, the first request opens the manager and it stays open until
    ``await app.close()`` or the end of the event loop (see docs/mounting.md).

    :param manager: the `GoalManager` to serve; the app uses its public methods only.
    :param authenticate: resolves a bearer token to a `goalkit.Principal` or None (unknown
        token: 401); may be async. Replaces the manager's `goalkit_authenticate` hooks.
        Default: `GoalManager.authenticate`, i.e. the hooks.
    :param keepalive: seconds of silence after which an event stream sends a
        ``: keep-alive`` comment (keeps proxies from closing idle connections).
    :param max_body: the largest request body accepted, in bytes; a larger one is refused
        with 413 without being read whole.
    :param sse_retry_ms: the reconnection delay, in milliseconds, an event stream tells
        EventSource clients in its first ``retry:`` line.
    :param send_timeout: seconds one write to an event stream may take; a client that stops
        reading for longer is dropped (None: wait forever).
    :param body_timeout: seconds a request body may take to arrive in full; a slower one
        is refused with 408 ``request_timeout`` (a client trickling a body cannot hold a
        request open).
    :param max_streams_per_user: how many event streams one user may hold open at once;
        one more is refused with 429 and ``Retry-After`` (None: no cap).
    """
    return GoalkitApp(
        manager,
        authenticate=authenticate,
        keepalive=keepalive,
        max_body=max_body,
        sse_retry_ms=sse_retry_ms,
        send_timeout=send_timeout,
        body_timeout=body_timeout,
        max_streams_per_user=max_streams_per_user,
    )

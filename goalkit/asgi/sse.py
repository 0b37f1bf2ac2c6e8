"""The server-sent events response: a goal's events as ``text/event-stream``.

The response is a task group racing two tasks: the producer, which waits for the next event
(sending a keep-alive comment whenever it waited `keepalive` seconds in vain) and writes it,
and a watcher that reads the request channel until ``http.disconnect``. Whichever finishes
first cancels the other, and the `EventStream` is closed on the way out, so a client that goes
away leaves no task and no subscription behind.

Deliberate divergences from sse-starlette: no ping task of its own (the keep-alive is the
producer's own timeout, so there is one task fewer per client and nothing to synchronise);
each write has a deadline (`send_timeout`), so a client that stops reading but keeps the
connection open is dropped like one that disconnected, instead of holding a task forever; an
error after the headers went out ends the stream quietly (it is logged) because the status
line can no longer change.
"""

from __future__ import annotations

import contextlib
import logging

import anyio

from goalkit import Event, EventStream
from goalkit.asgi.http import Receive, Send, json_bytes

__all__ = ["KEEPALIVE", "send_event_stream"]

log = logging.getLogger("goalkit.asgi")

KEEPALIVE = b": keep-alive\n\n"
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class _Gone(Exception):
    """The client cannot be written to any more (disconnected, or stopped reading)."""


def format_event(event: Event) -> bytes:
    """One SSE message: ``id``, ``event`` and a one-line JSON ``data``, then a blank line.

    A live-only event (``goal.step_delta``) has no ``id:`` line, so the id a client
    reconnects from (``Last-Event-ID``) is always the number of a stored event.
    """
    head = f"event: {event.type}\ndata: ".encode()
    if event.durable:
        head = f"id: {event.id}\n".encode() + head
    return head + json_bytes(event.to_dict()) + b"\n\n"


async def send_event_stream(
    send: Send,
    receive: Receive,
    stream: EventStream,
    *,
    retry_ms: int,
    keepalive: float,
    send_timeout: float | None,
    open_streams: set[anyio.CancelScope],
) -> None:
    """Answer 200 with `stream`'s events until its terminal event or the client leaves.

    :param retry_ms: the reconnection delay sent to the client in the first ``retry:`` line.
    :param keepalive: seconds without an event after which a ``: keep-alive`` comment is sent.
    :param send_timeout: seconds one write may take before the client is dropped.
    :param open_streams: where the stream registers its scope while it runs, so that a server
        shutting down can end every stream at once (clients reconnect with their last id).
    """
    async with stream, anyio.create_task_group() as race:
        open_streams.add(race.cancel_scope)
        race.start_soon(_watch_disconnect, receive, race.cancel_scope)
        try:
            await _produce(send, stream, retry_ms, keepalive, send_timeout)
        finally:
            open_streams.discard(race.cancel_scope)
            race.cancel_scope.cancel()


async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception:  # a server that fails receive() has lost the client as surely
        log.debug("receive() failed during an event stream", exc_info=True)
    scope.cancel()


async def _produce(
    send: Send, stream: EventStream, retry_ms: int, keepalive: float, send_timeout: float | None
) -> None:
    async def write(body: bytes, *, more: bool = True) -> None:
        try:
            with anyio.fail_after(send_timeout):
                await send({"type": "http.response.body", "body": body, "more_body": more})
        except Exception as exc:
            raise _Gone from exc

    try:
        try:
            with anyio.fail_after(send_timeout):
                await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        except Exception as exc:
            raise _Gone from exc
        await write(f"retry: {retry_ms}\n\n".encode())
        while True:
            event: Event | None = None
            with anyio.move_on_after(keepalive):
                # Cancelling this wait loses nothing: the stream re-reads by event number.
                event = await stream.__anext__()
            await write(KEEPALIVE if event is None else format_event(event))
    except StopAsyncIteration:
        pass
    except _Gone:
        log.debug("event stream client gone")
        return
    except Exception:
        log.exception("event stream failed; closing it")
    with contextlib.suppress(_Gone):
        await write(b"", more=False)

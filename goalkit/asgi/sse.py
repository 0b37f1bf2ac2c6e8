"""The server-sent events response: a goal's events as ``text/event-stream``.

The response is a task group racing two tasks: the producer, which waits for the next event
(sending a keep-alive comment whenever it waited `keepalive` seconds in vain) and writes it,
and a watcher that reads the request channel until ``http.disconnect``. Whichever finishes
first cancels the other, and the `EventStream` is closed on the way out, so a client that goes
away leaves no task and no subscription behind.

`OpenStreams` is the app's register of the streams it serves: it caps them per user (429)
and ends them all when the server shuts down (`OpenStreams.drain`). Draining cancels only the
producer's wait for the next event, never a write, so each stream then ends as it does after
a terminal event: with the final empty body, a complete response the client can reconnect
from. New streams are refused with 503 while draining.

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
from collections.abc import Iterator

import anyio

from goalkit import Event, EventStream, LimitExceeded
from goalkit.asgi.http import HTTPError, Receive, Send, json_bytes

__all__ = ["KEEPALIVE", "OpenStreams", "send_event_stream"]

log = logging.getLogger("goalkit.asgi")

KEEPALIVE = b": keep-alive\n\n"
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class _Gone(Exception):
    """The client cannot be written to any more (disconnected, or stopped reading)."""


class OpenStreams:
    """The event streams an app serves: at most `max_per_user` per user, all ended by `drain`.

    :param max_per_user: how many streams one user may hold open at once (None: no cap).
    :param retry_after: the seconds a refused client is told to wait (``Retry-After``).
    """

    def __init__(self, *, max_per_user: int | None, retry_after: int) -> None:
        self.max_per_user = max_per_user
        self.retry_after = retry_after
        self.draining = False
        self._per_user: dict[str, int] = {}
        self._waits: set[anyio.CancelScope] = set()

    def __len__(self) -> int:
        return sum(self._per_user.values())

    def drain(self) -> None:
        """End every open stream cleanly, and refuse new ones from now on."""
        self.draining = True
        for scope in list(self._waits):
            scope.cancel()

    @contextlib.contextmanager
    def admit(self, user: str) -> Iterator[None]:
        """Hold one of `user`'s places for the block; 503 while draining, 429 past the cap."""
        headers = {"retry-after": str(self.retry_after)}
        if self.draining:
            raise HTTPError(
                503,
                "unavailable",
                "the server is shutting down; reconnect with your last event id shortly",
                headers=headers,
            )
        held = self._per_user.get(user, 0)
        if self.max_per_user is not None and held >= self.max_per_user:
            raise HTTPError(
                429,
                LimitExceeded.code,
                f"at most {self.max_per_user} event streams may be open per user; close one first",
                headers=headers,
            )
        self._per_user[user] = held + 1
        try:
            yield
        finally:
            if self._per_user[user] == 1:
                del self._per_user[user]
            else:
                self._per_user[user] -= 1

    @contextlib.contextmanager
    def wait(self, seconds: float) -> Iterator[None]:
        """A wait of at most `seconds` for the block, which `drain` ends at once."""
        with anyio.move_on_after(seconds) as scope:
            if self.draining:
                scope.cancel()
            self._waits.add(scope)
            try:
                yield
            finally:
                self._waits.discard(scope)


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
    streams: OpenStreams,
) -> None:
    """Answer 200 with `stream`'s events until its terminal event, a drain, or the client leaves.

    :param retry_ms: the reconnection delay sent to the client in the first ``retry:`` line.
    :param keepalive: seconds without an event after which a ``: keep-alive`` comment is sent.
    :param send_timeout: seconds one write may take before the client is dropped.
    :param streams: the app's open streams, whose `OpenStreams.drain` ends this one cleanly
        (clients reconnect with their last id).
    """
    async with stream, anyio.create_task_group() as race:
        race.start_soon(_watch_disconnect, receive, race.cancel_scope)
        try:
            await _produce(send, stream, retry_ms, keepalive, send_timeout, streams)
        finally:
            race.cancel_scope.cancel()


async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception:  # a server that fails receive() has lost the client as surely
        log.debug("receive() failed during an event stream", exc_info=True)
    scope.cancel()


async def _produce(
    send: Send,
    stream: EventStream,
    retry_ms: int,
    keepalive: float,
    send_timeout: float | None,
    streams: OpenStreams,
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
        while not streams.draining:
            event: Event | None = None
            with streams.wait(keepalive):
                # Cancelling this wait loses nothing: the stream re-reads by event number.
                event = await stream.__anext__()
            if event is not None:
                await write(format_event(event))
            elif not streams.draining:
                await write(KEEPALIVE)
    except StopAsyncIteration:
        pass
    except _Gone:
        log.debug("event stream client gone")
        return
    except Exception:
        log.exception("event stream failed; closing it")
    with contextlib.suppress(_Gone):
        await write(b"", more=False)

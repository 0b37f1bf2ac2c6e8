"""Keeping the manager open: for a host's lifespan, and on demand when nobody did.

Hosts (Starlette, FastAPI, Litestar …) do not forward the ASGI lifespan to mounted apps, so a
host enters the manager in its own lifespan with the one-liner `lifespan`:

    app = FastAPI(lifespan=goalkit.asgi.lifespan(manager))
    app.mount("/goalkit", goalkit.asgi.create_app(manager))

When a request arrives and the manager is still not open, `Opener` opens it. The request's
own task cannot hold it open (an anyio task group cannot outlive the task that entered it),
so the manager is entered in a task of the event loop itself, an asyncio task (held by a
strong reference) or a trio system task, which keeps it open until the event loop shuts down
and cancels it; the manager is then left cleanly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any

import anyio

from goalkit import GoalManager

__all__ = ["ManagerLifespan", "Opener", "lifespan"]

log = logging.getLogger("goalkit.asgi")


class ManagerLifespan:
    """Opens the manager for the lifetime of a host application (unless it is open already).

    An async context manager that is also callable with the host application, which is the
    shape Starlette's and FastAPI's ``lifespan=`` argument takes.
    """

    def __init__(self, manager: GoalManager) -> None:
        self.manager = manager
        self._entered = False

    def __call__(self, app: object) -> ManagerLifespan:
        return ManagerLifespan(self.manager)

    async def __aenter__(self) -> None:
        # Returns None: Starlette takes a non-None value for lifespan state (a mapping).
        if not self.manager.is_open:
            await self.manager.__aenter__()
            self._entered = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._entered:
            self._entered = False
            await self.manager.__aexit__(exc_type, exc, tb)


def lifespan(manager: GoalManager) -> ManagerLifespan:
    """The lifespan a host application gives to open `manager` while it runs.

    ``Starlette(routes=[Mount("/goalkit", app)], lifespan=goalkit.asgi.lifespan(manager))``;
    also usable directly: ``async with goalkit.asgi.lifespan(manager): …``. A manager that is
    already open is left as it is (and not closed at the end).
    """
    return ManagerLifespan(manager)


class Opener:
    """Opens the manager on the first request that finds it closed, exactly once."""

    def __init__(self, manager: GoalManager) -> None:
        self.manager = manager
        self._ready: anyio.Event | None = None
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None  # a strong reference: see module doc
        self._stop: anyio.Event | None = None
        self._closed: anyio.Event | None = None

    async def ensure_open(self) -> None:
        """Return once the manager is open; raise what opening it raised."""
        if self.manager.is_open:
            return
        ready = self._ready
        if ready is None:
            # No await between the test and the assignment: on one event loop this is the
            # lock that lets exactly one request start the manager; the others wait below.
            ready = self._ready = anyio.Event()
            self._error = None
            self._stop, self._closed = anyio.Event(), anyio.Event()
            self._spawn(self._keep_open, ready)
        await ready.wait()
        if self._error is not None:
            raise self._error

    def _spawn(
        self,
        func: Callable[[anyio.Event], Coroutine[Any, Any, None]],
        ready: anyio.Event,
    ) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            self._task = loop.create_task(func(ready), name="goalkit manager")
            return
        import trio  # not asyncio: the other backend anyio runs on

        trio.lowlevel.spawn_system_task(func, ready, name="goalkit manager")

    async def close(self) -> None:
        """Leave the manager if this opener opened it (else do nothing); wait until it is."""
        stop, closed = self._stop, self._closed
        if stop is not None and closed is not None:
            stop.set()
            await closed.wait()

    async def _keep_open(self, ready: anyio.Event) -> None:
        stop, closed = self._stop, self._closed
        assert stop is not None and closed is not None
        try:
            try:
                await self.manager.__aenter__()
            except Exception as exc:
                log.exception("could not open the goal manager")
                self._error, self._ready = exc, None  # the next request tries again
                self._stop = self._closed = None
                ready.set()
                return
            ready.set()
            try:
                await stop.wait()  # or until the event loop ends and cancels this task
            finally:
                self._ready = self._stop = self._closed = None
                with anyio.CancelScope(shield=True):
                    await self.manager.__aexit__(None, None, None)
        finally:
            closed.set()

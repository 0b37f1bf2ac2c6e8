"""Keeping the manager open: for a host's lifespan, and on demand when nobody did.

Hosts (Starlette, FastAPI, Litestar …) do not forward the ASGI lifespan to mounted apps, so a
host enters the manager in its own lifespan with the one-liner `lifespan`:

    app = FastAPI(lifespan=goalkit.asgi.lifespan(manager))
    app.mount("/goalkit", goalkit.asgi.create_app(manager))

When a request arrives and the manager is still not open, `Opener` opens it. The request's
own task cannot hold it open (an anyio task group cannot outlive the task that entered it),
so it is held by a task of the event loop itself (an asyncio task, held by a strong
reference, or a trio system task) that enters the manager, waits, and leaves it, all in one
shielded cancel scope: the manager's task groups are left in the scope they were entered in,
and its exit (sinks drained, leases released, storage closed) runs to the end. A second task
waits for the same stop signal; being unshielded, it is the one the event loop's end cancels,
and it passes the stop on.

The manager is left when `Opener.close` (``GoalkitApp.close``) is awaited or, failing that,
when the event loop ends. At the loop's end trio cancels through scopes, which the shield
holds off, so the exit is as clean as `close`; asyncio cancels every task of the loop at once,
event sinks included, so events still queued for a sink may not reach it. Hence the advice:
give the host the lifespan, or await ``app.close()`` in its shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from functools import partial
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


class _Opening:
    """One attempt at opening the manager on request, and the signals around it."""

    def __init__(self) -> None:
        self.ready = anyio.Event()  # open, or opening failed
        self.stop = anyio.Event()  # leave the manager
        self.closed = anyio.Event()  # left (or never opened)
        self.error: BaseException | None = None  # what opening raised


class Opener:
    """Opens the manager on the first request that finds it closed, exactly once."""

    def __init__(self, manager: GoalManager) -> None:
        self.manager = manager
        self._opening: _Opening | None = None
        self._failure: BaseException | None = None  # what leaving raised
        self._tasks: list[asyncio.Task[None]] = []  # strong references: see module doc

    async def ensure_open(self) -> None:
        """Return once the manager is open; raise what opening it raised."""
        if self.manager.is_open:
            return
        opening = self._opening
        if opening is None:
            # No await between the test and the assignment: on one event loop this is the
            # lock that lets exactly one request start the manager; the others wait below.
            opening = self._opening = _Opening()
            self._spawn(partial(self._hold, opening), partial(self._await_end, opening))
        await opening.ready.wait()
        if opening.error is not None:
            raise opening.error

    async def close(self) -> None:
        """Leave the manager if this opener opened it (else do nothing); wait until it is.

        Raises what leaving the manager raised.
        """
        opening = self._opening
        if opening is not None:
            opening.stop.set()
            await opening.closed.wait()
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def _spawn(self, *tasks: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            self._tasks = [loop.create_task(task(), name="goalkit manager") for task in tasks]
            return
        import trio  # not asyncio: the other backend anyio runs on

        for task in tasks:
            trio.lowlevel.spawn_system_task(task, name="goalkit manager")

    async def _hold(self, opening: _Opening) -> None:
        # The manager is entered and left in this one task and scope, so its task groups are
        # left in the scope they were entered in. Shielded, so that its exit (sinks drained,
        # leases released, storage closed) is not cut short when the event loop ends.
        try:
            with anyio.CancelScope(shield=True):
                async with self.manager:
                    opening.ready.set()
                    await opening.stop.wait()
        except Exception as exc:
            if opening.ready.is_set():
                log.exception("the goal manager did not close cleanly")
                self._failure = exc
            else:
                log.exception("could not open the goal manager")
                opening.error = exc  # its waiters raise it; the next request tries again
        finally:
            if self._opening is opening:
                self._opening = None
            opening.ready.set()
            opening.stop.set()
            opening.closed.set()

    async def _await_end(self, opening: _Opening) -> None:
        # The shielded holder cannot see the event loop end; this task can: the loop
        # cancels it, and it tells the holder to leave the manager.
        try:
            await opening.stop.wait()
        finally:
            opening.stop.set()

"""`GoalManager`: the public entry point that owns storage, plugins and the engine.

One manager = one plugin manager, one storage connection, one task group. Entering it opens
storage and starts four kinds of task: a scheduler that leases runnable goals (new ones,
unfinished ones from an earlier run, and those of a process whose lease expired) up to
`max_concurrent`; a heartbeat that renews the leases of the goals it runs; a watcher that
brings events stored by other processes to the event streams open here; and a coordinator
per running goal. Every write goes through `_commit`, which stores first and publishes after.
Streamed text (``live_output``) is the one thing published without being stored.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import secrets
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager, nullcontext
from functools import partial
from types import TracebackType
from typing import Any, cast

import anyio
import anyio.lowlevel
import attrs
import pluggy
from anyio.abc import TaskGroup

from goalkit import transitions
from goalkit.engine import Coordinator, EventBus, EventStream, now, run_sink
from goalkit.errors import (
    GoalConflict,
    GoalkitError,
    GoalNotFound,
    InvalidGoal,
    LeaseLost,
    LimitExceeded,
    PluginError,
    StorageError,
)
from goalkit.models import (
    ErrorInfo,
    Event,
    Goal,
    GoalSpec,
    Page,
    Principal,
    Status,
    new_goal_id,
    new_workflow_id,
    validate_goal_spec,
    validate_idempotency_key,
    validate_list_query,
)
from goalkit.plugins import implementations, make_plugin_manager, resolve
from goalkit.providers import ModelProvider
from goalkit.retry import RetryPolicy
from goalkit.storage import Guarded, Storage

__all__ = ["GoalManager"]

log = logging.getLogger("goalkit")

_UNLOCKED = nullcontext()

SINK_DRAIN_SECONDS = 5.0
LIMIT_RETRY_AFTER = 10
"""Seconds a caller refused by `max_active_per_owner` is told to wait (HTTP Retry-After)."""


class GoalManager:
    """Persists goals and runs them to completion; an async context manager.

    :param storage: a storage URL (``sqlite:///goalkit.db``, ``memory://``, or any scheme a
        `goalkit_storage` plugin serves).
    :param plugins: extra plugins: modules, objects, or module names / ``.py`` paths.
    :param default_model: the model of goals created without one.
    :param max_concurrent: how many goals this manager runs at once; the rest wait, oldest
        first.
    :param max_retries: the default number of retries of a failed step (0–10).
    :param retry_backoff: the base delay in seconds of the exponential backoff between
        attempts, or a full `RetryPolicy`.
    :param step_timeout: seconds one provider call may take (None: no limit).
    :param lease_ttl: seconds a goal's lease lasts without a heartbeat; a crashed process's
        goals are taken over by another manager after this long.
    :param poll_interval: seconds between looks at storage for work other processes left
        (expired leases) and for events written by other processes (one look per goal that
        is followed here and not driven here); defaults to a tenth of `lease_ttl`, at most 1 s.
    :param entry_points: load plugins installed under the ``goalkit`` entry-point group.
    :param live_output: stream step answers from providers that can (``stream_step``) and
        publish each chunk of text as a live-only ``goal.step_delta`` event to the followers
        of `events` (and so to SSE clients); never stored and never sent to sinks.
    :param max_recoveries: how many times in a row a goal is resumed after the manager
        running it died (or froze, or lost its lease) without a step completing since; past
        that the goal fails with code ``crash_loop`` instead of crash-looping (a poison goal).
    :param max_active_per_owner: how many active (unfinished) goals one owner may have;
        `create` raises `LimitExceeded` past it (HTTP: 429 with ``Retry-After``). None (the
        default): no cap; ``goalkit serve`` sets 100.
    """

    def __init__(
        self,
        storage: str = "sqlite:///goalkit.db",
        *,
        plugins: Iterable[object | str] = (),
        default_model: str = "scripted",
        max_concurrent: int = 100,
        max_retries: int = 2,
        retry_backoff: float | RetryPolicy = 0.5,
        step_timeout: float | None = 300.0,
        lease_ttl: float = 30.0,
        poll_interval: float | None = None,
        entry_points: bool = True,
        live_output: bool = False,
        max_recoveries: int = 3,
        max_active_per_owner: int | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if not 0 <= max_retries <= 10:
            raise ValueError("max_retries must be from 0 to 10")
        if lease_ttl <= 0:
            raise ValueError("lease_ttl must be positive")
        if step_timeout is not None and step_timeout <= 0:
            raise ValueError("step_timeout must be positive or None")
        if max_recoveries < 0:
            raise ValueError("max_recoveries must be at least 0")
        self.max_recoveries = max_recoveries
        if max_active_per_owner is not None and (
            isinstance(max_active_per_owner, bool)
            or not isinstance(max_active_per_owner, int)
            or max_active_per_owner < 1
        ):
            raise ValueError("max_active_per_owner must be a positive integer or None")
        self.url = storage
        self.default_model = default_model
        self.max_concurrent = max_concurrent
        self.max_retries = max_retries
        self.retry_policy = (
            retry_backoff
            if isinstance(retry_backoff, RetryPolicy)
            else RetryPolicy(base=retry_backoff)
        )
        self.step_timeout = step_timeout
        self.max_active_per_owner = max_active_per_owner
        self.lease_ttl = lease_ttl
        self.poll_interval = (
            poll_interval if poll_interval is not None else min(1.0, lease_ttl / 10)
        )
        # How long a coordinator may go on after its lease was last secured: short of the
        # lease itself by a tenth, for the drift between this clock and the store's.
        self._lease_margin = lease_ttl * 0.9
        self._plugins = tuple(plugins)
        self._entry_points = entry_points
        self.live_output = live_output
        # A lease owner name unique to this manager instance: the fence token of its writes.
        self.owner_id = f"mgr-{secrets.token_hex(6)}"
        self._bus = EventBus()
        self._running: dict[str, anyio.CancelScope] = {}
        self._reserved = 0  # slots held by creations that will run their goal here
        # Goals may be waiting for a slot: one was created here while every slot was taken,
        # or the last claim took all it asked for. A freed slot then claims at once; without
        # a backlog it waits for the poll (goals of other managers that were all busy).
        self._backlog = True
        self._cooldown: dict[str, float] = {}
        # Poison-goal isolation: a goal recovered more than once (or max_recoveries times,
        # when that is lower) runs here only alone among such goals, so a goal that kills
        # its process cannot keep failing the neighbours it shares the process with.
        self._isolate_at = max(1, min(2, max_recoveries))
        self._suspect: str | None = None
        self._deferred: set[str] = set()
        self._providers: dict[str, ModelProvider] = {}
        # One write lock per goal driven here (see `_store`).
        self._write_locks: dict[str, anyio.Lock] = {}
        self._owner_locks: weakref.WeakValueDictionary[str, anyio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._wake = anyio.Event()
        self._closing = False
        self._stack: AsyncExitStack | None = None
        self._engine: TaskGroup | None = None
        self._pm: pluggy.PluginManager | None = None
        self._storage: Guarded | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def plugin_manager(self) -> pluggy.PluginManager:
        """This manager's own pluggy plugin manager."""
        if self._pm is None:
            self._pm = make_plugin_manager(self._plugins, entry_points=self._entry_points)
        return self._pm

    @property
    def storage(self) -> Storage:
        """The open storage backend."""
        return self._guarded.inner

    @property
    def _guarded(self) -> Guarded:
        # Every call of the manager and its engine goes through this guard (see `Guarded`).
        if self._storage is None:
            raise RuntimeError("GoalManager is not open: use 'async with GoalManager(...)'")
        return self._storage

    @property
    def is_open(self) -> bool:
        """True between entering and leaving the manager."""
        return self._storage is not None

    @property
    def running(self) -> frozenset[str]:
        """Ids of the goals this manager is driving right now."""
        return frozenset(self._running)

    async def __aenter__(self) -> GoalManager:
        if self._stack is not None:
            raise RuntimeError("GoalManager is already open")
        storage = self.plugin_manager.hook.goalkit_storage(url=self.url)
        if storage is None:
            raise StorageError(f"no storage plugin serves the URL {self.url!r}")
        if not isinstance(storage, Storage):
            raise PluginError(
                f"goalkit_storage returned {storage!r} for {self.url!r}, not a Storage"
            )
        guarded = Guarded(storage)
        async with AsyncExitStack() as stack:
            await guarded.open()
            stack.push_async_callback(guarded.close)
            # After the coordinators stop (the engine group exits first), before storage.
            stack.push_async_callback(self._close_providers)
            sinks = await stack.enter_async_context(anyio.create_task_group())
            for name, call in implementations(self.plugin_manager, "goalkit_event"):
                sinks.start_soon(
                    run_sink, name, call, self._bus.add_sink(), name=f"goalkit sink {name}"
                )
            stack.push_async_callback(self._drain_sinks, sinks)
            engine = await stack.enter_async_context(anyio.create_task_group())
            engine.start_soon(self._schedule, name="goalkit scheduler")
            engine.start_soon(self._heartbeat, name="goalkit heartbeat")
            engine.start_soon(self._watch, name="goalkit watcher")
            self._storage, self._engine = guarded, engine
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            return None
        assert self._engine is not None
        self._closing = True
        self._engine.cancel_scope.cancel()
        try:
            # The body's own exception is not fed to the task groups: they would wrap it in
            # an ExceptionGroup, and `except InvalidGoal` around the block would miss it.
            await stack.aclose()
        finally:
            self._storage = self._engine = None
            self._closing = False
            self._bus.close_inboxes()
        return None

    async def _close_providers(self) -> None:
        # Each provider object once, even when it serves several model names.
        providers = {id(p): p for p in self._providers.values()}
        self._providers.clear()
        for provider in providers.values():
            close = getattr(provider, "aclose", None)
            if close is None:
                continue
            with anyio.CancelScope(shield=True), anyio.move_on_after(SINK_DRAIN_SECONDS):
                try:
                    await resolve(close())
                except Exception:
                    log.exception("closing the model provider %r failed", provider)

    async def _drain_sinks(self, sinks: TaskGroup) -> None:
        # Sinks finish the events already queued, within a grace period.
        self._bus.close_sinks()
        sinks.cancel_scope.deadline = anyio.current_time() + SINK_DRAIN_SECONDS

    # -- the engine's loops -------------------------------------------------------------------

    async def _schedule(self) -> None:
        while True:
            self._wake = anyio.Event()
            free = self.max_concurrent - len(self._running) - self._reserved
            if free > 0:
                secured = anyio.current_time()
                self._backlog = False  # a creation while the claim runs sets it again
                try:
                    # Shielded: a claim that reached storage must reach a coordinator, whose
                    # exit releases the lease again if the manager is closing.
                    with anyio.CancelScope(shield=True):
                        goals = await self._guarded.claim_goals(
                            self.owner_id, ttl=self.lease_ttl, limit=free, exclude=self._excluded()
                        )
                except Exception:
                    log.exception("claiming goals failed; trying again")
                    goals = []
                    self._backlog = True
                self._backlog = self._backlog or len(goals) >= free
                for goal in await self._isolate(goals):
                    self._start(goal, secured)
            with anyio.move_on_after(self.poll_interval):
                await self._wake.wait()

    def _start(self, goal: Goal, secured: float) -> None:
        """Run a goal whose lease this manager took at `secured` (its clock) or later."""
        # The scope's deadline is this process's view of the lease: should renewals fail,
        # the coordinator stops before another manager may claim the goal, so two never
        # run it at once.
        scope = anyio.CancelScope(deadline=secured + self._lease_margin)
        self._running[goal.id] = scope
        self._write_locks[goal.id] = anyio.Lock(fast_acquire=True)
        assert self._engine is not None
        self._engine.start_soon(self._drive, goal, scope, name=f"goalkit coordinator {goal.id}")

    async def _isolate(self, goals: list[Goal]) -> list[Goal]:
        """The claimed goals to run now; suspects beyond the one allowed are handed back."""
        run: list[Goal] = []
        deferred: list[str] = []
        for goal in goals:
            if self._isolate_at <= goal.recoveries <= self.max_recoveries:
                if self._suspect is not None:
                    deferred.append(goal.id)
                    continue
                self._suspect = goal.id
                log.warning(
                    "goal %s: resumed after %d crash(es) in a row; running it isolated",
                    goal.id,
                    goal.recoveries,
                )
            run.append(goal)
        if deferred:
            # Released, not left to expire: waiting here is not a crash, and counts none.
            self._deferred.update(deferred)
            with anyio.CancelScope(shield=True):
                try:
                    await self._guarded.release_leases(self.owner_id, deferred)
                except Exception as exc:
                    log.warning("could not hand back suspect goals (%s); their leases expire", exc)
        return run

    def _suspect_cleared(self, goal_id: str) -> None:
        if self._suspect == goal_id:
            self._suspect = None
            self._deferred.clear()
            self._wake.set()

    async def _heartbeat(self) -> None:
        # Beats at least every second, not only every third of the lease: a goal cancelled
        # by another process has lost its lease, and this is how its call here is stopped.
        interval = min(self.lease_ttl / 3, max(self.poll_interval, 1.0))
        while True:
            await anyio.sleep(interval)
            ids = list(self._running)
            if not ids:
                continue
            secured = anyio.current_time()
            try:
                held = await self._guarded.renew_leases(self.owner_id, ids, ttl=self.lease_ttl)
            except Exception as exc:
                log.warning("renewing leases failed: %s", exc)
                continue
            for goal_id in ids:
                scope = self._running.get(goal_id)
                if scope is None:
                    continue
                if goal_id in held:
                    scope.deadline = secured + self._lease_margin
                else:
                    log.warning("lost the lease of goal %s; stopping its coordinator", goal_id)
                    scope.cancel()

    async def _watch(self) -> None:
        # Events of goals that this manager does not drive (another process does, or nobody
        # yet) reach the streams following them here from this loop: one look at storage per
        # goal and poll, however many streams follow it. Goals driven here publish their own.
        seen: dict[str, int] = {}
        while True:
            await anyio.sleep(self.poll_interval)
            watched = self._bus.watched() - self._running.keys()
            for goal_id in seen.keys() - watched:
                del seen[goal_id]
            for goal_id in watched:
                try:
                    goal = await self._guarded.get_goal(goal_id, steps=False)
                    if goal is None:
                        continue
                    # First look: hand on the newest event only; a stream that is behind it
                    # sees the gap and reads the rest from storage itself.
                    last = seen.get(goal_id, goal.last_event_id - 1)
                    if goal.last_event_id > last:
                        for event in await self._guarded.read_events(goal_id, after=last):
                            self._bus.publish_live(event)
                    seen[goal_id] = goal.last_event_id
                except Exception as exc:
                    log.warning("looking for new events of goal %s failed: %s", goal_id, exc)

    async def _drive(self, goal: Goal, scope: anyio.CancelScope) -> None:
        try:
            with scope:
                try:
                    provider = self._provider(goal.model)
                except GoalkitError as exc:
                    await self._commit(
                        transitions.fail(
                            goal,
                            ErrorInfo("provider_unavailable", exc.message),
                            now(),
                            lease=self.owner_id,
                        )
                    )
                    return
                coordinator = Coordinator(
                    goal=goal,
                    provider=provider,
                    commit=self._commit,
                    lease=self.owner_id,
                    policy=self.retry_policy,
                    step_timeout=self.step_timeout,
                    publish_delta=self._bus.publish_live if self.live_output else None,
                    max_recoveries=self.max_recoveries,
                )
                await coordinator.run()
        except LeaseLost:
            log.info("goal %s: lease lost (cancelled or taken over); coordinator stopped", goal.id)
        except Exception:
            # A storage outage or a bug: the lease runs out and the goal is retried later.
            log.exception(
                "goal %s: coordinator crashed; it resumes after its lease expires", goal.id
            )
        finally:
            if scope.cancelled_caught and anyio.current_time() >= scope.deadline:
                # Our lease may be gone: leave the goal to other managers for a lease's time
                # rather than win it straight back with the store that failed us.
                log.warning("goal %s: lease not renewed in time; coordinator stopped", goal.id)
                self._cooldown[goal.id] = anyio.current_time() + self.lease_ttl
            self._running.pop(goal.id, None)
            self._write_locks.pop(goal.id, None)
            self._suspect_cleared(goal.id)
            if self._backlog:
                self._wake.set()  # a freed slot, and goals may be waiting: claim now
            if self._closing:
                await self._release(goal.id)

    async def _release(self, goal_id: str) -> None:
        # Hand an unfinished goal back at once on the way out, so the next start (or another
        # process) resumes it without waiting for the lease to expire.
        with anyio.CancelScope(shield=True):
            try:
                await self._guarded.release_leases(self.owner_id, [goal_id])
            except Exception as exc:
                log.warning("could not release goal %s (%s); its lease expires", goal_id, exc)

    def _excluded(self) -> set[str]:
        """Goals the scheduler must not claim: those running here, and those cooling down."""
        clock = anyio.current_time()
        for goal_id in [g for g, until in self._cooldown.items() if until <= clock]:
            del self._cooldown[goal_id]
        return set(self._running) | set(self._cooldown) | self._deferred

    @asynccontextmanager
    async def _admit(self, owner: str) -> AsyncIterator[None]:
        """Hold the block (a goal's creation) to `max_active_per_owner` active goals.

        Creations by one owner take turns here, so within this manager the cap is exact;
        managers sharing a store may overshoot it by the creations they make at once.
        """
        cap = self.max_active_per_owner
        if cap is None:
            yield
            return
        lock = self._owner_locks.get(owner)
        if lock is None:
            lock = self._owner_locks[owner] = anyio.Lock()
        async with lock:
            active = (await self._guarded.list_goals(owner=owner, status="active", limit=1)).total
            if active >= cap:
                raise LimitExceeded(
                    f"{owner!r} has {active} active goals, the most allowed "
                    f"(max_active_per_owner={cap}); wait for one to end, or cancel one",
                    retry_after=LIMIT_RETRY_AFTER,
                )
            yield

    async def _commit(self, transition: transitions.Transition) -> tuple[Event, ...]:
        events = await self._store(transition.goal.id, partial(self._guarded.commit, transition))
        if transition.goal.recoveries == 0:
            self._suspect_cleared(transition.goal.id)  # it made progress: no suspect now
        return events

    async def _store(
        self, goal_id: str, write: Callable[[], Awaitable[tuple[Event, ...]]]
    ) -> tuple[Event, ...]:
        # Every write goes through here: stored first, then published. A goal driven here
        # has a write lock, which keeps publication in event order when a cancel and its
        # coordinator commit at once; a goal not driven here has one writer in this process
        # at most (its creation, or a cancel, which its version fence serialises). The shield
        # keeps a write that reached storage from going unpublished. A cancelled caller stops
        # here, before its write; the lock itself (fast_acquire) costs no trip through the
        # event loop when nobody else holds it.
        await anyio.lowlevel.checkpoint_if_cancelled()
        async with self._write_locks.get(goal_id) or _UNLOCKED:
            with anyio.CancelScope(shield=True):
                events = await write()
                for event in events:
                    if event.goal_id == goal_id:
                        self._bus.publish(event)
        return events

    def _provider(self, model: str) -> ModelProvider:
        provider = self._providers.get(model)
        if provider is None:
            provider = self.plugin_manager.hook.goalkit_model_provider(model=model)
            if provider is None:
                raise InvalidGoal(
                    f"no model provider serves {model!r} (installed providers: see 'goalkit plugins')",
                    field="model",
                )
            if not isinstance(provider, ModelProvider):
                raise PluginError(
                    f"goalkit_model_provider returned {provider!r} for {model!r}, "
                    "not a ModelProvider"
                )
            self._providers[model] = provider
        return provider

    # -- the public API -----------------------------------------------------------------------

    async def create(
        self,
        description: str,
        *,
        model: str | None = None,
        mode: str = "plan",
        max_steps: int = 10,
        max_retries: int | None = None,
        tags: Iterable[str] = (),
        owner: str = "local",
        idempotency_key: str | None = None,
        max_tokens: int | None = None,
    ) -> Goal:
        """Store a new goal and start it; raises `InvalidGoal` naming the field at fault.

        `max_tokens` is the goal's total token budget (None: none), counted over every
        provider call, planning included: no call is made once it is used up, and the goal
        fails with the error code ``budget_exceeded`` (see the providers guide).

        With an `idempotency_key`, a repeated call by the same owner with the same key returns
        the goal the first call created (even when both race), and one with the same key but
        different fields raises `GoalConflict`. Raises `LimitExceeded` when the owner already
        has `max_active_per_owner` active goals (checked before the key: a repeat sent at the
        cap is refused too).
        """
        spec = validate_goal_spec(
            description=description,
            model=self.default_model if model is None else model,
            mode=mode,
            max_steps=max_steps,
            max_retries=self.max_retries if max_retries is None else max_retries,
            tags=tags,
            owner=owner,
            max_tokens=max_tokens,
        )
        self._provider(spec.model)
        if idempotency_key is not None:
            validate_idempotency_key(idempotency_key)
        stamp = now()
        goal = Goal(
            id=new_goal_id(),
            workflow_id=new_workflow_id(),
            description=spec.description,
            model=spec.model,
            mode=spec.mode,
            max_steps=spec.max_steps,
            max_retries=spec.max_retries,
            tags=spec.tags,
            owner=spec.owner,
            status="active",
            phase="created",
            created_at=stamp,
            updated_at=stamp,
            max_tokens=spec.max_tokens,
        )
        transition = transitions.create(goal)
        fingerprint = "" if idempotency_key is None else _fingerprint(spec)
        # With a free slot, the goal is created already leased to this manager and runs at
        # once: no claim, and no wait for the scheduler.
        run_here = not self._closing and (len(self._running) + self._reserved < self.max_concurrent)

        secured = anyio.current_time()

        async def write() -> tuple[Event, ...]:
            nonlocal secured
            secured = anyio.current_time()  # the lease starts after this, in storage
            event = await self._guarded.create_goal(
                transition,
                idempotency_key=idempotency_key,
                fingerprint=fingerprint,
                lease_owner=self.owner_id if run_here else None,
                lease_ttl=self.lease_ttl,
            )
            return (event,)

        self._reserved += run_here
        try:
            async with self._admit(spec.owner):
                (event,) = await self._store(goal.id, write)
        finally:
            self._reserved -= run_here
        if event.goal_id != goal.id:  # the key was used before: that goal is the answer
            return await self.get(event.goal_id)
        if run_here:
            self._start(transition.goal, secured)  # no await since the write: cannot be lost
        else:
            self._backlog = True
            self._wake.set()
        return transition.goal

    async def authenticate(self, token: str) -> Principal | None:
        """The `Principal` a bearer token stands for, from the `goalkit_authenticate` hooks.

        Implementations are asked in hook order and each answer is awaited before the next
        is asked; the first that is not None wins.
        """
        for name, call in implementations(self.plugin_manager, "goalkit_authenticate"):
            principal = await resolve(call(token=token))
            if principal is None:
                continue
            if not isinstance(principal, Principal):
                raise PluginError(f"goalkit_authenticate of {name} returned {principal!r}")
            return principal
        return None

    async def get(self, goal_id: str) -> Goal:
        """The goal with its steps; raises `GoalNotFound`."""
        goal = await self._guarded.get_goal(_goal_id(goal_id))
        if goal is None:
            raise GoalNotFound(goal_id)
        return goal

    async def list(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        tag: str | None = None,
        limit: int = 50,
        offset: int | None = None,
        cursor: str | None = None,
    ) -> Page:
        """Goals newest first, filtered by owner (None: everyone's), status and tag.

        Page by `offset`, or by `cursor`: the `next_cursor` of the page before, which goes on
        just below that page's last goal, so goals created meanwhile neither repeat nor
        skip a goal, and a deep page costs what the first does. Not both at once.
        """
        validate_list_query(status=status, limit=limit, offset=offset, cursor=cursor)
        return await self._guarded.list_goals(
            owner=owner,
            status=cast("Status | None", status),  # checked just above
            tag=tag,
            limit=limit,
            offset=offset or 0,
            cursor=cursor,
        )

    async def by_workflow(self, workflow_id: str) -> builtins.list[Goal]:
        """The goals driven by a workflow id (an indexed lookup)."""
        return await self._guarded.goals_by_workflow(workflow_id)

    async def cancel(self, goal_id: str) -> Goal:
        """Cancel a goal: stops its in-flight provider call; `GoalConflict` if it has ended."""
        while True:
            goal = await self.get(goal_id)
            if goal.done:
                raise GoalConflict(f"goal {goal.id!r} is already {goal.status}")
            try:
                await self._commit(transitions.cancel(goal, now()))
            except GoalConflict:
                continue  # it moved on meanwhile: look again
            break
        scope = self._running.get(goal.id)
        if scope is not None:
            scope.cancel()
        return await self.get(goal.id)

    def events(self, goal_id: str, *, after: int = 0) -> EventStream:
        """The goal's events numbered above `after`: stored ones, then live ones.

        Use with ``async for``. Each event comes exactly once and in order; the iteration
        ends after the terminal event (at once when the goal has ended and `after` is past
        its last event). Raises `GoalNotFound` on the first iteration for an unknown goal.
        """
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise InvalidGoal("must be an integer of at least 0", field="after")
        return EventStream(self._guarded, self._bus, _goal_id(goal_id), after)

    async def wait(self, goal_id: str, timeout: float | None = None) -> Goal:  # noqa: ASYNC109
        """Wait until the goal ends and return it; `TimeoutError` after `timeout` seconds."""
        # Woken once, by the terminal event, rather than by every event of the goal; watched
        # before the first read, so an end published in between is not missed. An ended goal
        # returns before the timeout starts (so even `timeout=0` returns it).
        goal_id = _goal_id(goal_id)
        ended = self._bus.watch_end(goal_id)
        try:
            # A goal driven here has not ended (its coordinator is still running) and will
            # publish its end to `ended`: no need to read it first.
            if goal_id not in self._running:
                goal = await self._guarded.get_goal(goal_id, steps=False)
                if goal is None:
                    raise GoalNotFound(goal_id)
                if goal.done:
                    return await self.get(goal_id)
            with anyio.fail_after(timeout) if timeout is not None else nullcontext():
                while not ended.is_set():
                    with anyio.move_on_after(self.poll_interval):
                        await ended.wait()
                    if not ended.is_set():
                        # Quiet: the goal may have ended in another process, or its
                        # coordinator here stopped without ending it.
                        found = await self._guarded.get_goal(goal_id, steps=False)
                        if found is None or found.done:
                            break
        finally:
            self._bus.unwatch_end(goal_id, ended)
        return await self.get(goal_id)


def _fingerprint(spec: GoalSpec) -> str:
    """A digest of a creation request, to tell a retried request from a different one."""
    # No budget leaves the digest as it was before budgets existed, so keys stored by an
    # earlier version still match their retried requests.
    fields = attrs.asdict(
        spec, filter=lambda attribute, value: attribute.name != "max_tokens" or value is not None
    )
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _goal_id(goal_id: Any) -> str:
    if not isinstance(goal_id, str) or not goal_id:
        raise GoalNotFound(str(goal_id))
    return goal_id

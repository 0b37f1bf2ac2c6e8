"""The hook specifications of goalkit, and the markers plugins use.

A plugin is any module or object with functions marked ``@goalkit.hookimpl`` whose names are
among the hooks below. pluggy cannot await, so the `firstresult` hooks are synchronous and do
no I/O (they only pick an object); the other hooks are called for every implementation and
goalkit awaits whatever awaitable they return.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from goalkit.models import Event, Principal
    from goalkit.providers import ModelProvider
    from goalkit.storage import Storage

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "goalkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- Storage ----------------------------------------------------------------------------------


@hookspec(firstresult=True)
def goalkit_storage(url: str) -> Storage | None:
    """Return a `Storage` for this URL, or None when its scheme is not yours.

    Called once when a `GoalManager` opens. Synchronous: construct the object here and do
    the connecting in its `open` method.

    :param url: the storage URL the manager was given, e.g. ``sqlite:///goals.db``.

    Stops at first non-None result.
    """


# -- Model providers --------------------------------------------------------------------------


@hookspec(firstresult=True)
def goalkit_model_provider(model: str) -> ModelProvider | None:
    """Return a `ModelProvider` for this model name, or None when it is not yours.

    Called when a goal is created (an unknown model is an `InvalidGoal`) and when its
    coordinator starts. Synchronous: no network I/O here.

    :param model: the goal's model name, e.g. ``scripted`` or ``claude-sonnet-4-20250514``.

    Stops at first non-None result.
    """


# -- Events -----------------------------------------------------------------------------------


@hookspec
def goalkit_event(event: Event) -> Awaitable[None] | None:
    """Receive every event once, after it is stored; may return an awaitable.

    Each implementation is fed from its own queue, in order per goal, so a slow sink delays
    only itself. An exception is logged and never reaches the workflow.

    :param event: the stored event.
    """


# -- Authentication ---------------------------------------------------------------------------


@hookspec
def goalkit_authenticate(token: str) -> Principal | Awaitable[Principal | None] | None:
    """Return the `Principal` a bearer token stands for, or None; may return an awaitable.

    goalkit awaits the answers in hook order and the first that is not None wins.

    :param token: the bearer token, without the ``Bearer`` prefix. Never log it.
    """

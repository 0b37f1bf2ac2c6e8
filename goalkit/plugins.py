"""The per-manager plugin manager: built-ins, installed entry points, and explicit plugins.

Each `GoalManager` builds its own `pluggy.PluginManager` here, so two managers in one process
never share plugin state. Built-in behaviour is written as ordinary plugins and registered
the same way as external ones.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar, cast

import pluggy

from goalkit import hookspecs
from goalkit.errors import PluginError

__all__ = [
    "BUILTIN_PLUGINS",
    "hook_names",
    "implementations",
    "load_plugin",
    "make_plugin_manager",
    "plugin_name",
    "resolve",
]

BUILTIN_PLUGINS = (
    "goalkit.storage.sqlite",
    "goalkit.storage.memory",
    "goalkit.providers.scripted",
    "goalkit.providers.openai",
    "goalkit.providers.anthropic",
)
"""Modules registered into every plugin manager, before entry points and explicit plugins."""

T = TypeVar("T")


def load_plugin(spec: str) -> ModuleType:
    """Import a plugin from a module name (``my_pkg.plugin``) or a file path (``./p.py``)."""
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        path = Path(spec).resolve()
        if not path.is_file():
            raise PluginError(f"plugin file {spec!r} does not exist")
        name = f"goalkit_plugin_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise PluginError(f"cannot load plugin file {spec!r}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise PluginError(f"plugin file {spec!r} failed to import: {exc!r}") from exc
        return module
    try:
        return importlib.import_module(spec)
    except ImportError as exc:
        raise PluginError(f"cannot import plugin module {spec!r}: {exc}") from exc


def make_plugin_manager(
    plugins: Iterable[object | str] = (), *, entry_points: bool = True
) -> pluggy.PluginManager:
    """Build a plugin manager with the built-ins, installed plugins, then `plugins`.

    A plugin is a module, a class instance, or a string naming a module or a ``.py`` file.
    Raises `PluginError` for a hook implementation whose name matches no hookspec.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if entry_points:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    for plugin in plugins:
        module = load_plugin(plugin) if isinstance(plugin, str) else plugin
        try:
            pm.register(module)
        except ValueError as exc:  # pluggy: already registered
            raise PluginError(f"plugin {module!r} cannot be registered: {exc}") from exc
        except pluggy.PluginValidationError as exc:
            raise PluginError(str(exc)) from exc
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{exc} (goalkit hooks: {', '.join(hook_names())})") from exc
    return pm


def hook_names() -> list[str]:
    """Names of every hook goalkit defines."""
    return sorted(n for n in vars(hookspecs) if n.startswith("goalkit_"))


def plugin_name(pm: pluggy.PluginManager, plugin: object) -> str:
    """A readable name for a registered plugin (its module name where it has one)."""
    name = pm.get_name(plugin)
    if name and not name.isdigit():
        return name
    if isinstance(plugin, ModuleType):
        return plugin.__name__
    return f"{type(plugin).__module__}.{type(plugin).__qualname__}"


async def resolve(value: T | Awaitable[T]) -> T:
    """Await `value` if a hook implementation returned an awaitable, else return it."""
    if inspect.isawaitable(value):
        return cast(T, await value)
    return value


def implementations(pm: pluggy.PluginManager, hook: str) -> list[tuple[str, Callable[..., Any]]]:
    """(plugin name, call) of every implementation of `hook`, in the order pluggy calls them.

    For the hooks whose implementations goalkit calls one at a time: event sinks (each fed
    from its own queue) and authenticators (awaited in turn until one answers). Each call
    takes the hook's arguments by keyword and passes on those the implementation declares,
    as pluggy does.
    """
    caller = getattr(pm.hook, hook)
    return [
        (plugin_name(pm, impl.plugin), _bind(impl.function, impl.argnames))
        for impl in reversed(caller.get_hookimpls())
    ]


def _bind(function: Callable[..., Any], argnames: tuple[str, ...]) -> Callable[..., Any]:
    # A coroutine function stays one, so callers can tell what may block.
    if inspect.iscoroutinefunction(function):

        async def acall(**kwargs: Any) -> Any:
            return await function(**{name: kwargs[name] for name in argnames})

        return acall

    def call(**kwargs: Any) -> Any:
        return function(**{name: kwargs[name] for name in argnames})

    return call

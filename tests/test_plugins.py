"""Plugins as a plugin author writes them: files, modules, objects and installed packages.

This module also holds the meta-test that every hookspec has a test here and an entry in
docs/plugins.md with its exact signature.
"""

from __future__ import annotations

import inspect
import sys
import textwrap
import uuid
from collections.abc import Awaitable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

import goalkit
from goalkit import GoalManager, InvalidGoal, PluginError, Principal, StorageError, hookspecs
from goalkit.models import Event, Goal, Page, Status
from goalkit.plugins import hook_names, implementations, resolve
from goalkit.storage.memory import MemoryStorage
from goalkit.testing import EventRecorder
from goalkit.transitions import Transition

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
DOCS_PLUGINS = ROOT / "docs" / "plugins.md"

ECHO_PLUGIN = '''
"""A plugin module: an echo model provider and an async event sink."""

import goalkit

seen = []


class Echo:
    async def plan(self, goal, max_steps):
        return [f"echo {word}" for word in goal.description.split()]

    async def run_step(self, goal, step, previous):
        return step.title.upper()


@goalkit.hookimpl
def goalkit_model_provider(model):
    return Echo() if model == "echo" else None


@goalkit.hookimpl
async def goalkit_event(event):
    seen.append((event.goal_id, event.id, event.type))
'''


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for plugin modules; the modules are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith(("goalkit_plugin_", "plugin_")):
            del sys.modules[name]


def write_module(directory: Path, source: str) -> tuple[str, Path]:
    name = f"plugin_{uuid.uuid4().hex[:10]}"
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return name, path


def manager_for(*plugins: object, url: str = "memory://", **options: object) -> GoalManager:
    options.setdefault("retry_backoff", 0)
    options.setdefault("entry_points", False)
    return GoalManager(url, plugins=plugins, **options)  # type: ignore[arg-type]


async def authenticate(manager: GoalManager, token: str) -> Principal | None:
    """What the HTTP layer does with `goalkit_authenticate`: await answers in hook order."""
    for _name, call in implementations(manager.plugin_manager, "goalkit_authenticate"):
        principal = await resolve(call(token=token))
        if principal is not None:
            return principal
    return None


class TestPluginSources:
    """Plugins come as files, module names, module objects and class instances."""

    async def test_a_plugin_file_path(self, plugin_dir: Path) -> None:
        """A ``.py`` path in plugins=[...] is loaded; its provider and async sink both work."""
        _, path = write_module(plugin_dir, ECHO_PLUGIN)
        async with manager_for(str(path)) as manager:
            goal = await manager.wait((await manager.create("hello world", model="echo")).id)
            [module] = [
                p
                for p in manager.plugin_manager.get_plugins()
                if getattr(p, "__file__", None) == str(path)
            ]
        assert goal.status == "completed"
        assert [s.result for s in goal.steps] == ["ECHO HELLO", "ECHO WORLD"]
        assert [(g, n) for g, n, _ in module.seen] == [
            (goal.id, n) for n in range(1, goal.last_event_id + 1)
        ]

    async def test_a_module_name(self, plugin_dir: Path) -> None:
        """A dotted module name in plugins=[...] is imported and registered."""
        name, _ = write_module(plugin_dir, ECHO_PLUGIN)
        async with manager_for(name) as manager:
            goal = await manager.wait((await manager.create("hi", model="echo")).id)
        assert goal.result == "ECHO HI"

    async def test_a_module_object_and_a_class_instance(self, plugin_dir: Path) -> None:
        """An imported module and an object with hookimpl methods register alike."""
        name, _ = write_module(plugin_dir, ECHO_PLUGIN)
        module = __import__(name)
        recorder = EventRecorder()
        async with manager_for(module, recorder) as manager:
            goal = await manager.wait((await manager.create("a b c", model="echo")).id)
            assert manager.plugin_manager.is_registered(module)
            assert manager.plugin_manager.is_registered(recorder)
        assert recorder.types(goal.id)[-1] == "goal.completed"

    @pytest.mark.parametrize(
        "spec", ["./no/such/plugin.py", "no_such_module_for_goalkit_tests", "nope.py"]
    )
    async def test_a_missing_plugin_is_a_plugin_error(self, spec: str) -> None:
        """A path that does not exist or a module that cannot be imported is a PluginError."""
        with pytest.raises(PluginError) as info:
            async with manager_for(spec):
                pass  # pragma: no cover
        assert spec in str(info.value)

    async def test_a_plugin_file_that_fails_to_import_is_a_plugin_error(
        self, plugin_dir: Path
    ) -> None:
        """An exception while importing a plugin file becomes a PluginError naming the file."""
        _, path = write_module(plugin_dir, "raise RuntimeError('broken plugin')\n")
        with pytest.raises(PluginError) as info:
            async with manager_for(str(path)):
                pass  # pragma: no cover
        assert str(path) in str(info.value)
        assert "broken plugin" in str(info.value)

    async def test_the_same_plugin_twice_is_a_plugin_error(self) -> None:
        """Registering one object twice is refused with a PluginError."""
        recorder = EventRecorder()
        with pytest.raises(PluginError):
            async with manager_for(recorder, recorder):
                pass  # pragma: no cover


class TestHookValidation:
    """A hook implementation that matches no hookspec is an error at start-up."""

    async def test_a_misspelled_hook_fails_at_start_up(self) -> None:
        """`goalkit_evnt` raises PluginError naming it when the manager starts, not before."""

        class Typo:
            @goalkit.hookimpl
            def goalkit_evnt(self, event: Event) -> None:
                pass  # pragma: no cover

        manager = manager_for(Typo())  # building the manager does not load plugins yet
        with pytest.raises(PluginError) as info:
            async with manager:
                pass  # pragma: no cover
        assert "goalkit_evnt" in str(info.value)
        assert "goalkit_event" in str(info.value)  # the message lists the hooks that exist

    async def test_a_misspelled_hook_in_a_plugin_file(self, plugin_dir: Path) -> None:
        """The same holds for a module-level function in a plugin file."""
        _, path = write_module(
            plugin_dir,
            """
            import goalkit

            @goalkit.hookimpl
            def goalkit_model_providr(model):
                return None
            """,
        )
        with pytest.raises(PluginError) as info:
            async with manager_for(str(path)):
                pass  # pragma: no cover
        assert "goalkit_model_providr" in str(info.value)

    async def test_an_argument_the_hook_does_not_have(self) -> None:
        """An implementation asking for an argument its hook does not offer is a PluginError."""

        class Greedy:
            @goalkit.hookimpl
            def goalkit_event(self, event: Event, manager: object) -> None:
                pass  # pragma: no cover

        with pytest.raises(PluginError) as info:
            async with manager_for(Greedy()):
                pass  # pragma: no cover
        assert "manager" in str(info.value)

    async def test_an_implementation_may_take_fewer_arguments(self) -> None:
        """A sink declaring no arguments is called once per event."""

        class Counter:
            calls = 0

            @goalkit.hookimpl
            def goalkit_event(self) -> None:
                Counter.calls += 1

        async with manager_for(Counter()) as manager:
            goal = await manager.wait((await manager.create("Write a haiku.")).id)
        assert Counter.calls == goal.last_event_id


class SyncAuth:
    """Answers for alice's token with a plain return value."""

    @goalkit.hookimpl
    def goalkit_authenticate(self, token: str) -> Principal | None:
        return Principal("alice") if token in ("alice-secret", "shared") else None


class AsyncAuth:
    """Answers for root's token from an ``async def``."""

    @goalkit.hookimpl
    async def goalkit_authenticate(self, token: str) -> Principal | None:
        return Principal("root", admin=True) if token in ("root-secret", "shared") else None


class AwaitableAuth:
    """A sync function that returns an awaitable (say, a lookup it started)."""

    async def _lookup(self, token: str) -> Principal | None:
        return Principal("bob") if token == "bob-secret" else None

    @goalkit.hookimpl
    def goalkit_authenticate(self, token: str) -> Awaitable[Principal | None]:
        return self._lookup(token)


class TestSyncOrAwaitable:
    """Hook implementations may return a value or an awaitable; goalkit awaits the latter."""

    async def test_authenticate_answers_from_sync_async_and_awaitable_hooks(self) -> None:
        """Each kind of implementation can answer; a token nobody knows gives None."""
        async with manager_for(SyncAuth(), AsyncAuth(), AwaitableAuth()) as manager:
            assert await authenticate(manager, "alice-secret") == Principal("alice")
            assert await authenticate(manager, "root-secret") == Principal("root", admin=True)
            assert await authenticate(manager, "bob-secret") == Principal("bob")
            assert await authenticate(manager, "unknown") is None

    async def test_the_latest_registered_plugin_answers_first(self) -> None:
        """In hook order the most recently registered implementation is asked first."""
        async with manager_for(SyncAuth(), AsyncAuth()) as manager:
            assert await authenticate(manager, "shared") == Principal("root", admin=True)
        async with manager_for(AsyncAuth(), SyncAuth()) as manager:
            assert await authenticate(manager, "shared") == Principal("alice")


class CountingStorage:
    """A storage plugin's backend: MemoryStorage wrapped to count what the engine asks."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.inner = MemoryStorage()
        self.opened = self.closed = False
        self.committed = 0

    async def open(self) -> None:
        self.opened = True
        await self.inner.open()

    async def close(self) -> None:
        self.closed = True
        await self.inner.close()

    async def create_goal(self, transition: Transition, **options: Any) -> Event:
        return await self.inner.create_goal(transition, **options)

    async def commit(self, transition: Transition) -> tuple[Event, ...]:
        events = await self.inner.commit(transition)
        self.committed += len(events)
        return events

    async def get_goal(self, goal_id: str, *, steps: bool = True) -> Goal | None:
        return await self.inner.get_goal(goal_id, steps=steps)

    async def list_goals(
        self,
        *,
        owner: str | None = None,
        status: Status | None = None,
        tag: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page:
        return await self.inner.list_goals(
            owner=owner, status=status, tag=tag, limit=limit, offset=offset
        )

    async def goals_by_workflow(self, workflow_id: str) -> list[Goal]:
        return await self.inner.goals_by_workflow(workflow_id)

    async def read_events(self, goal_id: str, *, after: int = 0, limit: int = 1000) -> list[Event]:
        return await self.inner.read_events(goal_id, after=after, limit=limit)

    async def claim_goals(
        self, owner: str, *, ttl: float, limit: int, exclude: Iterable[str] = ()
    ) -> list[Goal]:
        return await self.inner.claim_goals(owner, ttl=ttl, limit=limit, exclude=exclude)

    async def renew_leases(self, owner: str, goal_ids: Iterable[str], *, ttl: float) -> set[str]:
        return await self.inner.renew_leases(owner, goal_ids, ttl=ttl)

    async def release_leases(self, owner: str, goal_ids: Iterable[str]) -> None:
        await self.inner.release_leases(owner, goal_ids)


class CountingStoragePlugin:
    """Serves ``counting://`` URLs and keeps the stores it built."""

    def __init__(self) -> None:
        self.stores: list[CountingStorage] = []

    @goalkit.hookimpl
    def goalkit_storage(self, url: str) -> CountingStorage | None:
        if not url.startswith("counting://"):
            return None
        store = CountingStorage(url)
        self.stores.append(store)
        return store


class TestStoragePlugins:
    """A storage backend is a plugin chosen by URL scheme."""

    async def test_a_custom_scheme_is_served_by_its_plugin(self) -> None:
        """The manager opens, uses and closes the plugin's storage for its URL."""
        plugin = CountingStoragePlugin()
        async with manager_for(plugin, url="counting://here") as manager:
            [store] = plugin.stores
            assert isinstance(store, goalkit.Storage)
            assert manager.storage is store
            assert store.opened
            goal = await manager.wait((await manager.create("Write a haiku.")).id)
            stored = await store.inner.get_goal(goal.id)
        assert stored == goal
        assert goal.status == "completed"
        assert store.committed == goal.last_event_id - 1  # every event but goal.created
        assert store.closed

    async def test_a_plugin_may_take_over_a_built_in_scheme(self) -> None:
        """Plugins are asked before the built-ins, so one can serve ``memory://`` itself."""

        class Takeover(CountingStoragePlugin):
            @goalkit.hookimpl
            def goalkit_storage(self, url: str) -> CountingStorage | None:
                store = CountingStorage(url)
                self.stores.append(store)
                return store

        plugin = Takeover()
        async with manager_for(plugin) as manager:
            assert manager.storage is plugin.stores[0]

    @pytest.mark.parametrize("url", ["nope://x", "sqlite:/relative-but-wrong", "memory:/"])
    async def test_an_unknown_storage_url_is_a_storage_error(self, url: str) -> None:
        """No plugin serving the URL: StorageError naming it, raised on entering the manager."""
        with pytest.raises(StorageError) as info:
            async with manager_for(url=url):
                pass  # pragma: no cover
        assert url in str(info.value)

    async def test_a_storage_plugin_returning_garbage_is_a_clear_error(self) -> None:
        """A `goalkit_storage` answer that is not a Storage is a goalkit error, not a crash."""

        class Garbage:
            @goalkit.hookimpl
            def goalkit_storage(self, url: str) -> object:
                return "not a storage"

        with pytest.raises(goalkit.GoalkitError) as info:
            async with manager_for(Garbage()):
                pass  # pragma: no cover
        assert "memory://" in str(info.value)


class TestProviderPlugins:
    """A model provider is a plugin chosen by model name."""

    async def test_a_plugin_may_take_over_a_built_in_model(self, plugin_dir: Path) -> None:
        """A plugin answering for ``scripted`` is used instead of the built-in provider."""
        _, path = write_module(
            plugin_dir,
            ECHO_PLUGIN.replace('model == "echo"', 'model == "scripted"'),
        )
        async with manager_for(str(path)) as manager:
            goal = await manager.wait((await manager.create("take over")).id)
        assert goal.model == "scripted"
        assert goal.result == "ECHO OVER"

    async def test_a_provider_plugin_returning_garbage_is_refused_at_create(self) -> None:
        """A `goalkit_model_provider` answer that is not a ModelProvider is refused at create."""

        class Garbage:
            @goalkit.hookimpl
            def goalkit_model_provider(self, model: str) -> object:
                return 42 if model == "junk" else None

        async with manager_for(Garbage()) as manager:
            with pytest.raises(goalkit.GoalkitError) as info:
                await manager.create("x", model="junk")
            assert "junk" in str(info.value)
            assert (await manager.list()).total == 0


def write_distribution(directory: Path, module: str, entry: str) -> None:
    """An installed distribution as pip leaves it: a dist-info with an entry_points.txt."""
    dist = directory / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 1.0\n",
        encoding="utf-8",
    )
    (dist / "entry_points.txt").write_text(f"[goalkit]\n{entry} = {module}\n", encoding="utf-8")


class TestEntryPoints:
    """Installed packages register plugins through the ``goalkit`` entry-point group."""

    async def test_an_installed_plugin_is_loaded(self, plugin_dir: Path) -> None:
        """A distribution on sys.path with a goalkit entry point is registered by its name."""
        module, _ = write_module(plugin_dir, ECHO_PLUGIN)
        write_distribution(plugin_dir, module, "echo_entry")
        async with GoalManager("memory://", retry_backoff=0) as manager:
            assert manager.plugin_manager.get_plugin("echo_entry") is sys.modules[module]
            goal = await manager.wait((await manager.create("installed", model="echo")).id)
        assert goal.result == "ECHO INSTALLED"

    async def test_entry_points_false_skips_installed_plugins(self, plugin_dir: Path) -> None:
        """With entry_points=False the installed plugin is not loaded."""
        module, _ = write_module(plugin_dir, ECHO_PLUGIN)
        write_distribution(plugin_dir, module, "echo_entry")
        async with GoalManager("memory://", entry_points=False) as manager:
            assert manager.plugin_manager.get_plugin("echo_entry") is None
            with pytest.raises(InvalidGoal) as info:
                await manager.create("installed", model="echo")
        assert info.value.field == "model"
        assert module not in sys.modules


class TestHookCoverage:
    """Every hook is exercised by this module and documented with its exact signature."""

    def test_every_hookspec_is_tested_here(self) -> None:
        """Each hookspec name appears in this test module."""
        source = Path(__file__).read_text(encoding="utf-8")
        names = hook_names()
        assert names == sorted(n for n, f in vars(hookspecs).items() if hasattr(f, "goalkit_spec"))
        assert [n for n in names if f"def {n}(" not in source] == []

    def test_every_hookspec_is_documented_with_its_signature(self) -> None:
        """docs/plugins.md shows ``def hook(args) -> result`` exactly as the hookspec has it."""
        if not DOCS_PLUGINS.exists():
            pytest.skip("docs/plugins.md is not written yet")
        docs = DOCS_PLUGINS.read_text(encoding="utf-8")
        missing = []
        for name in hook_names():
            signature = inspect.signature(getattr(hookspecs, name))
            params = ", ".join(f"{p.name}: {p.annotation}" for p in signature.parameters.values())
            line = f"def {name}({params}) -> {signature.return_annotation}"
            if line not in docs:
                missing.append(line)
        assert missing == []


class TestManagerAuthenticate:
    """`GoalManager.authenticate` asks the goalkit_authenticate hooks in order."""

    async def test_first_non_none_answer_wins_and_awaitables_are_awaited(self) -> None:
        """A sync None, then an async answer: the async one is the principal."""
        from goalkit import GoalManager, Principal, hookimpl

        asked: list[str] = []

        class Nobody:
            @hookimpl
            def goalkit_authenticate(self, token: str) -> None:
                asked.append("nobody")

        class Tokens:
            @hookimpl
            async def goalkit_authenticate(self, token: str) -> Principal | None:
                asked.append("tokens")
                return Principal("alice") if token == "t-alice" else None

        async with GoalManager("memory://", plugins=[Tokens(), Nobody()]) as manager:
            assert await manager.authenticate("t-alice") == Principal("alice")
            assert await manager.authenticate("wrong") is None
        assert asked == ["nobody", "tokens", "nobody", "tokens"]

    async def test_an_answer_that_is_not_a_principal_is_a_plugin_error(self) -> None:
        """A plugin returning garbage gets a clear PluginError, not a silent pass."""
        from goalkit import GoalManager, PluginError, hookimpl

        class Garbage:
            @hookimpl
            def goalkit_authenticate(self, token: str) -> str:
                return "alice"

        async with GoalManager("memory://", plugins=[Garbage()]) as manager:
            with pytest.raises(PluginError, match="goalkit_authenticate"):
                await manager.authenticate("x")

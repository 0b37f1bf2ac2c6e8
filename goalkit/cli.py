"""The ``goalkit`` command: run one goal with live progress, serve the HTTP API, list plugins.

``goalkit run`` drives its display from `GoalManager.events`, so what it shows is exactly what
was stored. On a terminal the step list is redrawn in place with ANSI cursor movement; when
stdout is a pipe or a file it prints one plain line per event, for logs and scripts.

Exit codes of ``goalkit run``: 0 the goal completed, 1 it failed or was cancelled elsewhere,
2 bad arguments (an `InvalidGoal` names the field), 130 interrupted by Ctrl-C, which cancels
the goal first. A second Ctrl-C stops waiting for the cancellation to be recorded.

``goalkit serve`` runs `goalkit.asgi.create_app` under uvicorn (the ``serve`` extra). Its exit
codes: 0 stopped by SIGTERM or Ctrl-C (after a graceful shutdown: unfinished goals stay active
and resume on the next start), 1 the server could not start, 2 bad arguments, a bad tokens
file, or no uvicorn.
"""

from __future__ import annotations

import argparse
import copy
import io
import ipaddress
import json
import secrets
import shutil
import signal
import sys
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Protocol, TextIO

import anyio
import pluggy

from goalkit.auth import StaticTokens, TokensFile, TokensFileError
from goalkit.errors import GoalConflict, GoalkitError, InvalidGoal, PluginError
from goalkit.manager import GoalManager
from goalkit.models import JSON, Event, Principal
from goalkit.plugins import BUILTIN_PLUGINS, hook_names, make_plugin_manager, plugin_name

__all__ = ["main"]

DEFAULT_STORAGE = "sqlite:///goalkit.db"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
MARKS = {"pending": "·", "retrying": "↻", "completed": "✓", "failed": "✗", "cancelled": "-"}
ASCII_SPINNER = "|/-\\"
ASCII_MARKS = {"pending": ".", "retrying": "~", "completed": "+", "failed": "x", "cancelled": "-"}
COLOURS = {"completed": "32", "failed": "31", "cancelled": "33"}
TICK = 0.1
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 11434
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
# Open SSE streams would hold a graceful shutdown forever: after this long they are cut
# (clients reconnect with Last-Event-ID and miss nothing) and the manager is left.
SHUTDOWN_TIMEOUT = 5
DEFAULT_MAX_ACTIVE, DEFAULT_MAX_STREAMS = 100, 10  # the server's defaults (docs/security.md)
ADMIN_USER = "admin"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``goalkit`` command line and return its exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if isinstance(sys.stdout, io.TextIOWrapper):
        # A description the terminal cannot encode must not crash the display.
        sys.stdout.reconfigure(errors="replace")
    try:
        if args.command == "plugins":
            return _plugins(args, sys.stdout)
        if args.command == "serve":
            return _serve(args)
        return anyio.run(_run, args, sys.stdout)
    except (InvalidGoal, PluginError) as exc:
        _error(args.command, str(exc))
        return EXIT_USAGE
    except GoalkitError as exc:
        _error(args.command, str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        # Ctrl-C before the goal existed (while the manager opened): nothing to cancel.
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="goalkit", description="Durable, multi-step agent goals.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run one goal in this process with live progress",
        description="Run one goal in this process and show its progress. Exit status: "
        "0 completed, 1 failed, 2 bad arguments, 130 interrupted (the goal is cancelled).",
    )
    run.add_argument("description", help="what the goal should achieve")
    run.add_argument("--model", help="model name (default: the manager's, 'scripted')")
    run.add_argument("--max-steps", type=int, metavar="N", help="at most N steps (1-100)")
    run.add_argument(
        "--max-retries", type=int, metavar="N", help="retries of a failed step (0-10, default 2)"
    )
    run.add_argument("--mode", choices=("plan", "direct"), help="plan steps, or one direct step")
    run.add_argument(
        "--max-tokens",
        type=int,
        metavar="N",
        help="token budget over every model call (default: none); past it the goal fails",
    )
    run.add_argument(
        "--storage", default=DEFAULT_STORAGE, metavar="URL", help=f"(default: {DEFAULT_STORAGE})"
    )
    _plugin_option(run)

    plugins = commands.add_parser(
        "plugins",
        help="list the registered plugins and their hooks",
        description="List the built-in, installed and -p plugins and the hooks each implements.",
    )
    _plugin_option(plugins)
    plugins.add_argument("--json", action="store_true", help="print JSON")

    serve = commands.add_parser(
        "serve",
        help="serve the HTTP API with uvicorn",
        description="Serve the HTTP API (REST and server-sent events) with uvicorn. Without "
        "--tokens, one admin token is generated and printed once, and only loopback hosts "
        "are allowed. Stop it with SIGTERM or Ctrl-C: unfinished goals resume on the next "
        "start.",
    )
    serve.add_argument(
        "--storage", default=DEFAULT_STORAGE, metavar="URL", help=f"(default: {DEFAULT_STORAGE})"
    )
    serve.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST})"
    )
    serve.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"(default: {DEFAULT_PORT})"
    )
    serve.add_argument(
        "--tokens",
        metavar="FILE",
        help="TOML file of bearer tokens ([tokens] table); without it an admin token is "
        "generated and printed once",
    )
    serve.add_argument(
        "--live-output",
        action="store_true",
        help="stream step answers from providers that can, as live-only goal.step_delta "
        "events on the event streams (never stored)",
    )
    _plugin_option(serve)
    serve.add_argument(
        "--max-active-goals",
        type=_cap,
        default=DEFAULT_MAX_ACTIVE,
        metavar="N",
        help=f"active goals one user may have; 0: no cap (default: {DEFAULT_MAX_ACTIVE})",
    )
    serve.add_argument(
        "--max-streams",
        type=_cap,
        default=DEFAULT_MAX_STREAMS,
        metavar="N",
        help=f"event streams one user may hold open; 0: no cap (default: {DEFAULT_MAX_STREAMS})",
    )
    serve.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="(default: info)")
    return parser


def _cap(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number, 0 for no cap, got {text!r}")
    return int(text)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be from 1 to 65535, got {port}")
    return port


def _plugin_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-p",
        "--plugin",
        dest="plugins",
        action="append",
        default=[],
        metavar="PLUGIN",
        help="load a plugin module or .py file (repeatable)",
    )


def _error(command: str, message: str) -> None:
    print(f"goalkit {command}: error: {message}", file=sys.stderr)


# -- goalkit plugins --------------------------------------------------------------------------


def _plugins(args: argparse.Namespace, out: TextIO) -> int:
    pm = make_plugin_manager(args.plugins)
    listing = _plugin_listing(pm)
    if args.json:
        print(json.dumps({"plugins": listing, "hooks": hook_names()}, indent=2), file=out)
        return EXIT_OK
    for entry in listing:
        print(f"{entry['name']}  ({entry['source']})", file=out)
        for hook in entry["hooks"] or ["(no hooks)"]:
            print(f"    {hook}", file=out)
    return EXIT_OK


def _plugin_listing(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    listing = []
    for _, plugin in pm.list_name_plugin():
        if plugin is None:  # a blocked name
            continue
        name = plugin_name(pm, plugin)
        if name in BUILTIN_PLUGINS:
            source = "built-in"
        elif id(plugin) in dists:
            dist = dists[id(plugin)]
            source = f"entry point of {dist.project_name} {dist.version}"
        else:
            source = f"-p {getattr(plugin, '__file__', None) or name}"
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
        listing.append({"name": name, "source": source, "hooks": hooks})
    return listing


# -- goalkit serve ----------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        _error("serve", "uvicorn is not installed: pip install 'goalkit[serve]'")
        return EXIT_USAGE
    from goalkit.asgi import create_app

    auth: TokensFile | StaticTokens
    token: str | None = None  # the generated one, when there is no tokens file
    if args.tokens is not None:
        try:
            auth = TokensFile(args.tokens)
        except TokensFileError as exc:
            _error("serve", str(exc))
            return EXIT_USAGE
    elif not _is_loopback(args.host):
        _error(
            "serve",
            f"--host {args.host} is not a loopback address: serving beyond this machine "
            "needs --tokens FILE (a generated token is for local use only)",
        )
        return EXIT_USAGE
    else:
        token = secrets.token_urlsafe(32)
        auth = StaticTokens({token: Principal(ADMIN_USER, admin=True)})
    manager = GoalManager(
        args.storage,
        plugins=[*args.plugins, auth],
        live_output=args.live_output,
        max_active_per_owner=args.max_active_goals or None,
    )
    # Load the plugins and pick the storage now (both without I/O): a bad plugin or an
    # unknown URL scheme is a usage error, not a server that fails to start.
    if manager.plugin_manager.hook.goalkit_storage(url=args.storage) is None:
        _error("serve", f"no storage plugin serves the URL {args.storage!r}")
        return EXIT_USAGE
    if token is not None:
        print(f"goalkit serve: admin token (shown once): {token}", file=sys.stderr, flush=True)
    app = create_app(manager, max_streams_per_user=args.max_streams or None)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        lifespan="on",
        log_level=args.log_level,
        log_config=_log_config(uvicorn.config.LOGGING_CONFIG, args.log_level),
        timeout_graceful_shutdown=SHUTDOWN_TIMEOUT,
        server_header=False,
        # Bounds for clients the server does not control. Past 1,000 open connections
        # (each event stream holds one) uvicorn answers 503 instead of running out of file
        # descriptors; an idle keep-alive connection is closed after 5 s; request headers
        # are capped at 16 KiB. A body that trickles in meets the app's own deadline
        # (create_app's body_timeout: 408).
        limit_concurrency=1000,
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=16 * 1024,
    )
    server = uvicorn.Server(config)
    with _quiet_exit_signals():
        code = anyio.run(_serve_until_stopped, server, app.drain, backend="asyncio")
    if code not in (0, None):
        _error("serve", "the server did not start (see the log above)")
        return EXIT_FAILED
    return EXIT_OK if server.started else EXIT_FAILED


async def _serve_until_stopped(server: Any, drain: Callable[[], None]) -> str | int | None:
    """Run `server` (a ``uvicorn.Server``) and `drain` the app as soon as it begins to stop.

    Returns the code of the `SystemExit` by which uvicorn gives up when the lifespan or the
    socket fails (None when it served and stopped).

    uvicorn tells an application nothing when it starts shutting down: the lifespan's
    shutdown comes only after every open response has ended, which an event stream never
    does by itself, so streams would hold the shutdown for its whole grace period. The
    narrowest hook that overrides nothing is ``Server.should_exit``, the flag uvicorn's own
    signal handler sets and its main loop polls every 0.1 s; it is watched here at the same
    pace, next to ``Server.serve()``, uvicorn's entry point for running in an event loop of
    one's own.
    """

    async def drain_when_stopping() -> None:
        # A plain flag, set from a signal handler: there is no event to wait on instead.
        while not server.should_exit:  # noqa: ASYNC110
            await anyio.sleep(0.1)
        drain()

    code: str | int | None = None
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(drain_when_stopping)
        try:
            await server.serve()
        except SystemExit as exc:  # caught here: a task group would wrap it in a group
            code = exc.code
        tasks.cancel_scope.cancel()
    return code


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _log_config(base: dict[str, Any], level: str) -> dict[str, Any]:
    """uvicorn's logging, with goalkit's own logger printed the same way, and query strings
    in the access log redacted (a token a client put in a URL is not written down)."""
    config = copy.deepcopy(base)
    config["loggers"]["goalkit"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    config.setdefault("filters", {})["goalkit_redact_queries"] = {
        "()": "goalkit.asgi.routes.RedactQueries"
    }
    config["loggers"].setdefault("uvicorn.access", {})["filters"] = ["goalkit_redact_queries"]
    return config


@contextmanager
def _quiet_exit_signals() -> Iterator[None]:
    """While serving, SIGTERM and SIGINT stop uvicorn gracefully, and nothing more.

    uvicorn re-raises the signal it caught once it has shut down, to the handler that was in
    place before it; that would kill the process (SIGTERM) or raise KeyboardInterrupt (SIGINT)
    after a clean shutdown. A no-op handler in between makes the stop an exit 0.
    """
    signals = [signal.SIGINT, signal.SIGTERM]
    try:
        previous = {sig: signal.signal(sig, lambda *_: None) for sig in signals}
    except ValueError:  # not the main thread: uvicorn does not catch signals either
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- goalkit run ------------------------------------------------------------------------------


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    fields: dict[str, Any] = {"description": args.description}
    for name in ("model", "max_steps", "max_retries", "mode", "max_tokens"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    async with GoalManager(args.storage, plugins=args.plugins) as manager:
        # Handled here, not in `main`: an error leaving the manager's block would come out
        # wrapped in an exception group by its task group.
        try:
            goal = await manager.create(**fields)
        except InvalidGoal as exc:
            _error("run", str(exc))
            return EXIT_USAGE
        view: View = TerminalView(out) if out.isatty() else LineView(out)
        try:
            interrupted = await _follow(manager, goal.id, view)
        finally:
            view.close()
        final = await manager.get(goal.id)
    if final.status == "completed":
        return EXIT_OK  # even when Ctrl-C came too late to stop it
    return EXIT_INTERRUPTED if interrupted else EXIT_FAILED


async def _follow(manager: GoalManager, goal_id: str, view: View) -> bool:
    """Show the goal's events until it ends; True when Ctrl-C was pressed meanwhile."""
    interrupted = False

    async def on_interrupt() -> None:
        nonlocal interrupted
        with anyio.open_signal_receiver(signal.SIGINT) as signals:
            async for _ in signals:
                if interrupted:  # the second Ctrl-C: stop waiting
                    tg.cancel_scope.cancel()
                    return
                interrupted = True
                view.note("interrupted: cancelling the goal (Ctrl-C again to quit)")
                with suppress(GoalConflict):
                    await manager.cancel(goal_id)

    async with anyio.create_task_group() as tg:
        if sys.platform != "win32":
            tg.start_soon(on_interrupt)
        if isinstance(view, TerminalView):
            tg.start_soon(view.animate)
        async for event in manager.events(goal_id):
            view.event(event)
        tg.cancel_scope.cancel()
    return interrupted


class View(Protocol):
    def event(self, event: Event) -> None: ...

    def note(self, message: str) -> None: ...

    def close(self) -> None: ...


def _text(value: JSON) -> str:
    """A result as one line: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _outcome(event: Event) -> str | None:
    """The closing line of a goal for a terminal event, else None."""
    data = event.data
    if event.type == "goal.completed":
        return f"completed: {_text(data.get('result'))}"
    if event.type == "goal.failed":
        error = data.get("error") or {}
        return f"failed: {error.get('message', 'unknown error')}"
    if event.type == "goal.cancelled":
        done, total = data.get("steps_completed", 0), data.get("total_steps", 0)
        return f"cancelled after {done}/{total} steps"
    return None


class LineView:
    """One plain line per event, for pipes, files and logs."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.total: int | None = None

    def _print(self, line: str) -> None:
        print(_plain(line), file=self.out, flush=True)

    def _step(self, data: Any) -> str:
        return f"step {data.get('step')}/{self.total}" if self.total else f"step {data.get('step')}"

    def event(self, event: Event) -> None:
        data = event.data
        if event.type == "goal.created":
            self._print(
                f"{event.goal_id} created (model {data.get('model')}, mode {data.get('mode')})"
            )
        elif event.type == "goal.decomposed":
            self.total = data.get("total_steps")
            self._print(f"decomposed into {self.total} step{'s' if self.total != 1 else ''}")
        elif event.type == "goal.step_started":
            attempt = data.get("attempt", 1)
            again = f" (attempt {attempt})" if attempt > 1 else ""
            self._print(f"{self._step(data)} started{again}: {data.get('title')}")
        elif event.type == "goal.step_completed":
            self._print(f"{self._step(data)} completed")
        elif event.type == "goal.step_failed":
            then = "retrying" if data.get("will_retry") else "giving up"
            error = (data.get("error") or {}).get("message", "")
            self._print(
                f"{self._step(data)} failed (attempt {data.get('attempt')}): {error}; {then}"
            )
        elif (line := _outcome(event)) is not None:
            self._print(line)

    def note(self, message: str) -> None:
        self._print(message)

    def close(self) -> None:
        pass


class TerminalView:
    """A step list redrawn in place with ANSI cursor movement, with a spinner on the live step."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.header: str | None = None
        self.phase = "planning"
        self.titles: list[str] = []
        # step index -> pending, running, retrying, completed, failed or cancelled
        self.states: dict[int, str] = {}
        self.notes: dict[int, str] = {}
        self.outcome: str | None = None
        self.drawn = 0  # lines of the last drawing, to move back up over
        self.frame = 0
        self.unicode = _can_encode(out, SPINNER + "".join(MARKS.values()) + "…")

    def event(self, event: Event) -> None:
        data = event.data
        step = int(data.get("step") or 0)
        if event.type == "goal.created":
            self.header = _plain(f"{event.goal_id}  {data.get('description', '')}")
        elif event.type == "goal.decomposed":
            self.titles = [_plain(str(s.get("title", ""))) for s in data.get("steps", [])]
            self.states = dict.fromkeys(range(1, len(self.titles) + 1), "pending")
            self.phase = "running"
        elif event.type == "goal.step_started":
            self.states[step] = "running"
            attempt = data.get("attempt", 1)
            self.notes[step] = f"attempt {attempt}" if attempt > 1 else ""
        elif event.type == "goal.step_completed":
            self.states[step] = "completed"
            self.notes[step] = ""
        elif event.type == "goal.step_failed":
            retry = data.get("will_retry")
            self.states[step] = "retrying" if retry else "failed"
            error = (data.get("error") or {}).get("message", "")
            self.notes[step] = _plain(f"attempt {data.get('attempt')} failed: {error}")
        elif event.terminal:
            self.phase = "done"
            self.outcome = _plain(_outcome(event) or "")
            for index, state in self.states.items():
                if state in ("pending", "running", "retrying") and event.type == "goal.cancelled":
                    self.states[index] = "cancelled"
        self.draw()

    def note(self, message: str) -> None:
        self.notes[0] = message
        self.draw()

    async def animate(self) -> None:
        """Turn the spinner until cancelled."""
        while True:
            await anyio.sleep(TICK)
            self.frame += 1
            self.draw()

    def close(self) -> None:
        self.draw()
        self.out.write("\x1b[?25h")  # show the cursor again
        if self.outcome:
            self.out.write(self.outcome + "\n")
        self.out.flush()

    def _mark(self, state: str) -> str:
        if state == "running":
            spinner = SPINNER if self.unicode else ASCII_SPINNER
            return spinner[self.frame % len(spinner)]
        mark = (MARKS if self.unicode else ASCII_MARKS)[state]
        colour = COLOURS.get(state)
        return f"\x1b[{colour}m{mark}\x1b[0m" if colour else mark

    def _lines(self, height: int) -> list[str]:
        head = [self.header] if self.header else []
        if self.phase == "planning":
            head.append(f"  {self._mark('running')} planning")
        tail = [self.notes[0]] if self.notes.get(0) else []
        total = len(self.titles)
        steps = []
        for index, title in enumerate(self.titles, start=1):
            mark = self._mark(self.states.get(index, "pending"))
            note = self.notes.get(index)
            steps.append(f"  {mark} {index}/{total} {title}" + (f"  ({note})" if note else ""))
        focus = next((i for i, s in self.states.items() if s != "completed"), total) - 1
        # Cursor movement cannot go above the top of the screen: stay shorter than it.
        room = max(3, height - 1 - len(head) - len(tail))
        return head + _window(steps, focus, room) + tail

    def draw(self) -> None:
        size = shutil.get_terminal_size()
        width = max(20, size.columns)
        # Up over the last drawing, clear to the end of the screen, draw again; the cursor is
        # hidden meanwhile so it does not flicker.
        buffer = [f"\x1b[{self.drawn}A\r" if self.drawn else "\x1b[?25l\r", "\x1b[J"]
        lines = self._lines(size.lines)
        for line in lines:
            buffer.append(_fit(line, width - 1, self.unicode) + "\n")
        self.out.write("".join(buffer))
        self.out.flush()
        self.drawn = len(lines)


def _window(rows: list[str], focus: int, room: int) -> list[str]:
    """At most `room` of `rows`, around `rows[focus]`, with a line for each hidden part."""
    if len(rows) <= room:
        return rows
    size = room - 2
    start = max(0, min(focus - 1, len(rows) - size))
    after = len(rows) - start - size
    above = [f"  ⋮ {start} more above"] if start else []
    below = [f"  ⋮ {after} more below"] if after else []
    return above + rows[start : start + size] + below


def _plain(text: str) -> str:
    """`text` with control characters (newlines, escape sequences) turned into spaces.

    Descriptions, titles and errors come from users and providers: an escape sequence in one
    must not move the cursor or recolour the terminal, nor a newline split a line.
    """
    return "".join(" " if unicodedata.category(c) == "Cc" else c for c in text)


def _can_encode(out: TextIO, text: str) -> bool:
    try:
        text.encode(getattr(out, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _fit(line: str, width: int, unicode: bool = True) -> str:
    """Cut `line` to `width` terminal columns, so no line wraps and the redraw stays aligned.

    ANSI sequences take no columns; East Asian wide characters take two.
    """
    used, cut = 0, []
    i = 0
    while i < len(line):
        char = line[i]
        if char == "\x1b":
            end = line.find("m", i)
            end = len(line) - 1 if end == -1 else end
            cut.append(line[i : end + 1])
            i = end + 1
            continue
        size = 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
        if used + size > width:
            cut.append(("…" if unicode else ">") if used < width else "")
            cut.append("\x1b[0m")
            break
        cut.append(char)
        used += size
        i += 1
    return "".join(cut)

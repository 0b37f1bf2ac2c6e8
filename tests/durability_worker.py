"""A worker process for ``tests/test_durability.py``: one `GoalManager` on a SQLite file.

Run as ``python tests/durability_worker.py --db FILE --log FILE [options]``. The file is also
the provider plugin the worker loads, by path, as ``goalkit serve -p FILE`` would: the model
``recorded`` plans ``max_steps`` steps and appends every `run_step` call to the call log,
once when the call starts and once just before it returns, each line flushed and fsynced::

    S <goal_id> <step> <attempt> <pid> <unix time>
    E <goal_id> <step> <attempt> <pid> <unix time>

A step's result is ``{"pid": …, "step": …, "attempt": …}``, so the stored results say which
process ran them. The provider is configured through the environment (the worker sets it),
because a plugin loaded by path is a module of its own: ``GOALKIT_CALL_LOG`` (the log file),
``GOALKIT_STEP_DELAY`` (seconds each call takes; ``GOALKIT_SLOW_STEP`` and
``GOALKIT_SLOW_DELAY`` give one step number a delay of its own) and ``GOALKIT_STUBBORN`` (``1``: the call
ignores cancellation while it sleeps, like a client that cannot be interrupted, so a
frozen-and-resumed owner really holds a result it will try to write). A goal whose description
starts with ``poison`` is a poison goal: the first call of its step 2 SIGKILLs the process,
every time (after logging the ``S`` line).

The worker creates ``--create N`` goals (or, with ``--expect N``, waits until the store holds
N goals that others create), waits until every goal of the store has ended, prints a JSON
summary on stdout and exits 0. ``--ready FILE`` is written once the manager has started, and
``--created FILE`` once all its goals are stored.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

from goalkit import GoalManager, hookimpl
from goalkit.models import JSON, Goal, Step

MODEL = "recorded"


def _record(kind: str, goal: Goal, step: Step) -> None:
    line = f"{kind} {goal.id} {step.index} {step.attempts} {os.getpid()} {time.time():.6f}\n"
    fd = os.open(os.environ["GOALKIT_CALL_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write() of a short line: atomic under O_APPEND
        os.fsync(fd)
    finally:
        os.close(fd)


class RecordingProvider:
    """Plans ``max_steps`` steps; each call is logged durably and takes ``GOALKIT_STEP_DELAY``."""

    async def plan(self, goal: Goal, max_steps: int) -> list[str]:
        return [f"part {i}" for i in range(1, max_steps + 1)]

    async def run_step(self, goal: Goal, step: Step, previous: Sequence[Step]) -> JSON:
        _record("S", goal, step)
        if goal.description.startswith("poison") and step.index == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        delay = float(os.environ.get("GOALKIT_STEP_DELAY", "0.02"))
        if step.index == int(os.environ.get("GOALKIT_SLOW_STEP", "0")):
            delay = float(os.environ["GOALKIT_SLOW_DELAY"])
        if os.environ.get("GOALKIT_STUBBORN") == "1":
            with anyio.CancelScope(shield=True):
                await anyio.sleep(delay)
        else:
            await anyio.sleep(delay)
        _record("E", goal, step)
        return {"pid": os.getpid(), "step": step.index, "attempt": step.attempts}


_provider = RecordingProvider()


@hookimpl
def goalkit_model_provider(model: str) -> RecordingProvider | None:
    return _provider if model == MODEL else None


def _touch(path: str | None, text: str = "") -> None:
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text(text)
        tmp.rename(path)  # appears whole or not at all


async def main(args: argparse.Namespace) -> None:
    async with GoalManager(
        f"sqlite:///{args.db}",
        plugins=[__file__],
        entry_points=False,
        lease_ttl=args.lease_ttl,
        max_concurrent=args.max_concurrent,
        max_retries=args.max_retries,
        retry_backoff=0,
        step_timeout=30,
        max_recoveries=args.max_recoveries,
    ) as manager:
        _touch(args.ready, manager.owner_id)
        names = [f"goal {i}" for i in range(args.create)]
        names += [f"poison {i}" for i in range(args.poison)]
        created = [
            (await manager.create(name, model=MODEL, max_steps=args.steps)).id for name in names
        ]
        _touch(args.created, "\n".join(created))
        with anyio.fail_after(args.timeout):
            while (await manager.list(limit=1)).total < args.expect:  # noqa: ASYNC110
                await anyio.sleep(0.05)
            goals = (await manager.list(limit=500)).items
            ended = [await manager.wait(goal.id) for goal in goals]
        summary = {
            "pid": os.getpid(),
            "owner": manager.owner_id,
            "goals": {goal.id: goal.status for goal in ended},
        }
    print(json.dumps(summary), flush=True)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--log", required=True, help="the call log file")
    parser.add_argument("--create", type=int, default=0, help="goals to create")
    parser.add_argument("--poison", type=int, default=0, help="poison goals to create last")
    parser.add_argument("--max-recoveries", type=int, default=3)
    parser.add_argument("--expect", type=int, default=0, help="goals to wait for in the store")
    parser.add_argument("--steps", type=int, default=3, help="steps per goal")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds per provider call")
    parser.add_argument("--slow-step", type=int, default=0, help="this step takes --slow-delay")
    parser.add_argument("--slow-delay", type=float, default=0.0)
    parser.add_argument("--stubborn", action="store_true", help="calls ignore cancellation")
    parser.add_argument("--lease-ttl", type=float, default=1.5)
    parser.add_argument("--max-concurrent", type=int, default=100)
    parser.add_argument("--max-retries", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--ready", help="file written once the manager runs")
    parser.add_argument("--created", help="file written once the goals are stored")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    os.environ["GOALKIT_CALL_LOG"] = arguments.log
    os.environ["GOALKIT_STEP_DELAY"] = str(arguments.delay)
    os.environ["GOALKIT_STUBBORN"] = "1" if arguments.stubborn else "0"
    os.environ["GOALKIT_SLOW_STEP"] = str(arguments.slow_step)
    os.environ["GOALKIT_SLOW_DELAY"] = str(arguments.slow_delay)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s pid {os.getpid()} %(levelname)s %(name)s: %(message)s",
    )
    anyio.run(main, arguments)

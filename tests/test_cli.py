"""The ``goalkit`` command, run as a real subprocess (``python -m goalkit``)."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

TIMEOUT = 60

BROKEN_PLUGIN = """
from goalkit import hookimpl


class Broken:
    async def plan(self, goal, max_steps):
        return ["only step"]

    async def run_step(self, goal, step, previous):
        raise RuntimeError("the broken model broke")


@hookimpl
def goalkit_model_provider(model):
    return Broken() if model == "broken" else None
"""


def goalkit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m goalkit ARGS`` in `cwd` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "goalkit", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=TIMEOUT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'goals.db'}"


@pytest.fixture
def broken_plugin(tmp_path: Path) -> Path:
    path = tmp_path / "broken_plugin.py"
    path.write_text(textwrap.dedent(BROKEN_PLUGIN))
    return path


class TestRun:
    """``goalkit run`` runs one goal in process and reports how it ended."""

    def test_completes_with_plain_lines(self, tmp_path: Path, storage: str) -> None:
        """A completed goal exits 0 and, off a terminal, prints one plain line per event."""
        proc = goalkit(
            "run", "Find sources, then summarise them", "--storage", storage, cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0].startswith("goal-") and lines[0].endswith(
            "created (model scripted, mode plan)"
        )
        assert lines[1:] == [
            "decomposed into 2 steps",
            "step 1/2 started: Find sources",
            "step 1/2 completed",
            "step 2/2 started: Summarise them",
            "step 2/2 completed",
            "completed: [scripted] Step 2/2 'Summarise them': done (builds on 1 previous step)",
        ]
        assert "\x1b" not in proc.stdout
        assert (tmp_path / "goals.db").is_file()

    def test_default_storage_is_goalkit_db(self, tmp_path: Path) -> None:
        """Without --storage the goal is stored in ./goalkit.db."""
        proc = goalkit("run", "Write a haiku", "--max-steps", "1", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[-1] == (
            "completed: [scripted] Step 1/1 'Research: Write a haiku': done (first step)"
        )
        assert (tmp_path / "goalkit.db").is_file()

    def test_direct_mode_runs_one_step(self, tmp_path: Path, storage: str) -> None:
        """--mode direct runs the description as a single step."""
        proc = goalkit(
            "run", "Say hi. Then leave", "--mode", "direct", "--storage", storage, cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr
        assert "decomposed into 1 step" in proc.stdout.splitlines()

    def test_invalid_max_steps_exits_2_naming_the_field(self, tmp_path: Path, storage: str) -> None:
        """--max-steps 0 is refused with exit 2 and a message naming max_steps."""
        proc = goalkit("run", "x", "--max-steps", "0", "--storage", storage, cwd=tmp_path)
        assert proc.returncode == 2
        assert "max_steps" in proc.stderr
        assert "Traceback" not in proc.stderr

    def test_unknown_model_exits_2(self, tmp_path: Path, storage: str) -> None:
        """A model no provider serves is refused with exit 2 and a message naming model."""
        proc = goalkit("run", "x", "--model", "no-such-model", "--storage", storage, cwd=tmp_path)
        assert proc.returncode == 2
        assert "model" in proc.stderr
        assert "Traceback" not in proc.stderr

    def test_usage_error_exits_2(self, tmp_path: Path) -> None:
        """A malformed command line exits 2 (argparse)."""
        assert goalkit("run", "--max-steps", "many", "x", cwd=tmp_path).returncode == 2
        assert goalkit(cwd=tmp_path).returncode == 2

    def test_failing_goal_exits_1(self, tmp_path: Path, storage: str, broken_plugin: Path) -> None:
        """A goal whose step keeps raising retries, then fails, and the command exits 1."""
        proc = goalkit(
            "run", "x", "--model", "broken", "--max-retries", "1",
            "-p", str(broken_plugin), "--storage", storage, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        out = proc.stdout
        assert re.search(
            r"^step 1/1 failed \(attempt 1\): .*broken model broke; retrying$", out, re.M
        )
        assert "step 1/1 started (attempt 2): only step" in out
        assert "giving up" in out
        assert out.splitlines()[-1].startswith("failed: ")
        assert "the broken model broke" in out.splitlines()[-1]

    def test_token_budget_stops_the_goal(self, tmp_path: Path, storage: str) -> None:
        """--max-tokens sets the goal's budget; the scripted plan alone passes 10 tokens."""
        proc = goalkit(
            "run", "Research tides", "--max-tokens", "10", "--storage", storage, cwd=tmp_path
        )
        assert proc.returncode == 1, proc.stderr
        assert proc.stdout.splitlines()[-1].startswith("failed: planning attempt 1 used ")
        assert "of max_tokens=10 used" in proc.stdout
        bad = goalkit("run", "x", "--max-tokens", "0", "--storage", storage, cwd=tmp_path)
        assert bad.returncode == 2 and "max_tokens" in bad.stderr

    def test_missing_plugin_file_exits_2(self, tmp_path: Path, storage: str) -> None:
        """A -p file that does not exist is a usage error."""
        proc = goalkit("run", "x", "-p", "nope.py", "--storage", storage, cwd=tmp_path)
        assert proc.returncode == 2
        assert "nope.py" in proc.stderr

    @pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
    def test_ctrl_c_cancels_the_goal(self, tmp_path: Path, storage: str) -> None:
        """SIGINT while a step runs cancels the goal and exits 130."""
        command = [sys.executable, "-m", "goalkit", "run", "a. b. c", "--model", "scripted/0.5"]
        with subprocess.Popen(
            [*command, "--storage", storage],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    if line.startswith("step 1/3 started"):
                        break
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=TIMEOUT)
            finally:
                proc.kill()
        assert proc.returncode == 130, err
        assert re.search(r"^cancelled after [0-2]/3 steps$", out, re.MULTILINE), out
        assert "Traceback" not in err


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
class TestRunOnATerminal:
    """On a terminal ``goalkit run`` redraws a step list in place."""

    def test_redraws_with_cursor_movement(self, tmp_path: Path, storage: str) -> None:
        """The output moves the cursor up to redraw and ends with the result."""
        import pty

        command = [sys.executable, "-m", "goalkit", "run", "Plan it. Do it", "--model"]
        primary, secondary = pty.openpty()
        with subprocess.Popen(
            [*command, "scripted/0.2", "--storage", storage],
            cwd=tmp_path,
            stdin=secondary,
            stdout=secondary,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONIOENCODING": "utf-8", "COLUMNS": "80"},
        ) as proc:
            os.close(secondary)
            try:
                out = read_until_closed(primary).decode("utf-8", "replace")
                _, err = proc.communicate(timeout=TIMEOUT)
            finally:
                proc.kill()
                os.close(primary)
        assert proc.returncode == 0, err
        assert re.search(r"\x1b\[\d+A", out), "no cursor-up sequence"
        assert "\x1b[J" in out
        assert "1/2 Plan it" in out and "2/2 Do it" in out
        assert "✓" in out
        assert out.rstrip().endswith(
            "completed: [scripted] Step 2/2 'Do it': done (builds on 1 previous step)"
        )


def read_until_closed(fd: int) -> bytes:
    """Everything written to a pseudo-terminal until its other end closes (or TIMEOUT)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO on Linux: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


class TestPlugins:
    """``goalkit plugins`` lists every registered plugin with the hooks it implements."""

    def test_lists_builtins_and_their_hooks(self, tmp_path: Path) -> None:
        """The built-in storage and provider plugins appear with their hook names."""
        proc = goalkit("plugins", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        for name in ("goalkit.storage.sqlite", "goalkit.storage.memory"):
            assert f"{name}  (built-in)\n    goalkit_storage\n" in out
        assert "goalkit.providers.scripted  (built-in)\n    goalkit_model_provider\n" in out

    def test_file_plugin_appears(self, tmp_path: Path, broken_plugin: Path) -> None:
        """A -p file plugin is listed with its source file and hook."""
        proc = goalkit("plugins", "-p", str(broken_plugin), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert f"(-p {broken_plugin})\n    goalkit_model_provider\n" in proc.stdout

    def test_json(self, tmp_path: Path, broken_plugin: Path) -> None:
        """--json gives every plugin with its source and hooks, and every hook name."""
        proc = goalkit("plugins", "--json", "-p", str(broken_plugin), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        by_name = {entry["name"]: entry for entry in data["plugins"]}
        assert by_name["goalkit.storage.sqlite"] == {
            "name": "goalkit.storage.sqlite",
            "source": "built-in",
            "hooks": ["goalkit_storage"],
        }
        assert by_name["goalkit.providers.scripted"]["hooks"] == ["goalkit_model_provider"]
        assert [e["hooks"] for e in data["plugins"] if e["source"].startswith("-p ")] == [
            ["goalkit_model_provider"]
        ]
        assert "goalkit_event" in data["hooks"]

    def test_plugin_with_unknown_hook_exits_2(self, tmp_path: Path) -> None:
        """A plugin implementing a hook goalkit does not define is refused, naming the hook."""
        bad = tmp_path / "typo_plugin.py"
        bad.write_text(
            "from goalkit import hookimpl\n\n@hookimpl\ndef goalkit_modle_provider(model):\n"
            "    return None\n"
        )
        proc = goalkit("plugins", "-p", str(bad), cwd=tmp_path)
        assert proc.returncode == 2
        assert "goalkit_modle_provider" in proc.stderr

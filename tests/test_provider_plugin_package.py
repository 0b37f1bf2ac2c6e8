"""The example plugin package installs with pip and is found through its entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "examples" / "provider_plugin"
TIMEOUT = 120


def python(*args: str, cwd: Path, path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONPATH": str(path)}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=TIMEOUT,
        env=env,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The package pip-installed into a directory of its own (the test venv stays as it is)."""
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",  # hatchling comes from the test extra: no download
            "--target",
            str(target),
            str(PACKAGE),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    yield target


class TestProviderPluginPackage:
    """examples/provider_plugin: an installable package that adds the echo/<anything> models."""

    def test_listed_as_an_entry_point(self, installed: Path, tmp_path: Path) -> None:
        """`goalkit plugins` shows the package's module, loaded through the entry point."""
        done = python("-m", "goalkit", "plugins", "--json", cwd=tmp_path, path=installed)
        assert done.returncode == 0, done.stderr
        by_name = {entry["name"]: entry for entry in json.loads(done.stdout)["plugins"]}
        assert by_name["echo_provider"] == {
            "name": "echo_provider",
            "source": "entry point of goalkit-echo-provider 0.1.0",
            "hooks": ["goalkit_model_provider"],
        }

    def test_goal_runs_with_its_model(self, installed: Path, tmp_path: Path) -> None:
        """`goalkit run --model echo/<voice>` runs a goal on the installed provider."""
        done = python(
            "-m",
            "goalkit",
            "run",
            "--model",
            "echo/hello",
            "--storage",
            "memory://",
            "Fetch the data\nPlot it",
            cwd=tmp_path,
            path=installed,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "completed: hello: Plot it" in done.stdout

    def test_not_loaded_when_not_installed(self, tmp_path: Path) -> None:
        """Without the package on the path, its model name is unknown."""
        done = python(
            "-m",
            "goalkit",
            "run",
            "--model",
            "echo/hello",
            "--storage",
            "memory://",
            "x",
            cwd=tmp_path,
            path=tmp_path,
        )
        assert done.returncode != 0
        assert "no model provider serves 'echo/hello'" in done.stdout + done.stderr

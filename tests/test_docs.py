"""The docs cannot drift: their examples run, and they name what the code defines."""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import goalkit
from goalkit import hookspecs
from goalkit.plugins import hook_names

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
TIMEOUT = 60

SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("test_"))
TEST_FILES = sorted(EXAMPLES.glob("test_*.py"))
PAGES = sorted(DOCS.glob("*.md"))
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$', re.MULTILINE)


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=TIMEOUT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


def python_blocks(path: Path) -> list[str]:
    return FENCE.findall(path.read_text(encoding="utf-8"))


class TestExamples:
    @pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
    def test_example_runs(self, script: Path, tmp_path: Path) -> None:
        """Every example script runs to completion (in a scratch directory)."""
        done = run(script, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr

    @pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
    def test_example_test_file_passes(self, test_file: Path) -> None:
        """Every example test file passes under pytest."""
        done = run("-m", "pytest", "-q", "-p", "no:cacheprovider", test_file, cwd=ROOT)
        assert done.returncode == 0, done.stdout + done.stderr

    def test_plugin_module_works_with_goalkit_run(self, tmp_path: Path) -> None:
        """The module plugin of the tutorial serves its model to `goalkit run -p`."""
        done = run(
            "-m",
            "goalkit",
            "run",
            "-p",
            EXAMPLES / "echo_plugin.py",
            "--model",
            "echo",
            "--storage",
            "memory://",
            "Fetch the data\nClean it\nPlot it",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "completed: echo: Plot it" in done.stdout


class TestReadme:
    def test_readme_example_is_the_quickstart(self) -> None:
        """The README's Python example is examples/quickstart.py, which the tests run."""
        (block,) = python_blocks(ROOT / "README.md")
        assert block == (EXAMPLES / "quickstart.py").read_text(encoding="utf-8")

    def test_readme_commands(self) -> None:
        """The README gives the fresh-machine commands that CI and users rely on."""
        text = (ROOT / "README.md").read_text(encoding="utf-8")
        assert ".venv/bin/pip install -e . && .venv/bin/goalkit run " in text
        assert "bash .ci/run" in text
        assert os.access(ROOT / ".ci" / "run", os.X_OK)


class TestPages:
    @pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
    def test_snippets_exist(self, page: Path) -> None:
        """Every file a page includes with `--8<--` exists."""
        for name in SNIPPET.findall(page.read_text(encoding="utf-8")):
            assert (ROOT / name).is_file(), f"{page.name} includes missing {name}"

    @pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
    def test_python_fragments_compile(self, page: Path) -> None:
        """Every Python fragment written in a page is valid Python (top-level await allowed)."""
        for block in python_blocks(page):
            if SNIPPET.search(block):
                continue  # an included example file, run by TestExamples
            compile(block, f"<{page.name}>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


class TestReference:
    @pytest.mark.parametrize("name", goalkit.__all__)
    def test_public_name_in_api_reference(self, name: str) -> None:
        """Every public name of goalkit has an entry in the API reference."""
        assert f"::: goalkit.{name}\n" in (DOCS / "api.md").read_text(encoding="utf-8")

    @pytest.mark.parametrize("name", hook_names())
    def test_hook_documented_with_its_signature(self, name: str) -> None:
        """Every hook has a section in the plugin guide showing its exact arguments."""
        spec = getattr(hookspecs, name)
        signature = inspect.signature(spec)
        params = ", ".join(f"{p.name}: {p.annotation}" for p in signature.parameters.values())
        text = (DOCS / "plugins.md").read_text(encoding="utf-8")
        assert f"\n### {name}\n" in text
        assert f"def {name}({params}) -> {signature.return_annotation}: ..." in text

"""The public surface: what `import goalkit` exposes, and the benchmark users are told to run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import goalkit

ROOT = Path(__file__).resolve().parent.parent

SPEC_NAMES = {
    # SPEC §2: the manager, the values, StepSpec, and the error hierarchy.
    "GoalManager",
    "Goal",
    "Step",
    "Event",
    "StepSpec",
    "GoalkitError",
    "InvalidGoal",
    "NotAuthenticated",
    "Forbidden",
    "GoalNotFound",
    "GoalConflict",
    # SPEC §3: the plugin markers, the two protocols and the principal.
    "hookimpl",
    "hookspec",
    "ModelProvider",
    "Storage",
    "Principal",
}


class TestPublicNames:
    """`goalkit.__all__` holds the contract's names, each importable, and nothing private."""

    def test_every_spec_name_is_exported(self) -> None:
        """Every name SPEC §2 and §3 promise is in `goalkit.__all__`."""
        assert set(goalkit.__all__) >= SPEC_NAMES

    def test_every_exported_name_exists_and_is_public(self) -> None:
        """No name in `__all__` is missing or private, and `__all__` has no duplicates."""
        assert len(goalkit.__all__) == len(set(goalkit.__all__))
        for name in goalkit.__all__:
            assert not name.startswith("_"), name
            assert hasattr(goalkit, name), name

    def test_errors_carry_their_http_status(self) -> None:
        """Each error of the hierarchy maps to the HTTP status SPEC §2 gives it."""
        expected = {
            goalkit.InvalidGoal: 400,
            goalkit.NotAuthenticated: 401,
            goalkit.Forbidden: 403,
            goalkit.GoalNotFound: 404,
            goalkit.GoalConflict: 409,
            goalkit.LimitExceeded: 429,
        }
        for error, status in expected.items():
            assert issubclass(error, goalkit.GoalkitError)
            assert error.status == status


class TestEngineBenchmark:
    """`benchmarks/engine.py --quick` runs and reports the commits each goal costs."""

    def test_quick_run_prints_the_table_with_commit_counts(self) -> None:
        """Six goalkit and baseline rows; a 3-step plan goal takes 6 writes, direct 4.

        (Each step's completion shares its write with the next step's start, or the end.)
        """
        run = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "engine.py"), "--quick"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        rows = [line for line in run.stdout.splitlines() if line.startswith("| `")]
        assert len(rows) == 6
        transitions = {
            (cells[0], cells[1]): cells[5]
            for cells in (re.split(r"\s*\|\s*", row.strip("| ")) for row in rows)
        }
        assert transitions[("`plan` (3 steps)", "goalkit, one at a time")] == "6.00"
        assert transitions[("`direct` (1 step)", "goalkit, 100 at once")] == "4.00"

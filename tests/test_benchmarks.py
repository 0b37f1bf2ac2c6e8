"""`benchmarks/http_load.py` end to end, at its smallest: real servers, a real load, real streams.

It runs `goalkit serve` and the Starlette floor as uvicorn processes on 127.0.0.1 and checks
what the script itself checks (every request answered 201 or 200; every SSE subscriber got
every stored event of its goal once and in order). Its figures are not looked at: performance
is the benchmarks' business (docs/benchmarks.md), not the tests'.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_http_benchmark_runs_and_sse_delivery_holds(tmp_path: Path) -> None:
    """Four request rows, their ratios, and an SSE row saying every event arrived in order."""
    output = tmp_path / "http.md"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "http_load.py"),
            "--quick",
            "--client=raw",
            "--duration=0.3",
            "--warmup=0.1",
            "--connections=8",
            "--prefill=20",
            "--sse-goals=3",
            "--sse-steps=2",
            "--sse-subscribers=2",
            f"--output={output}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    text = output.read_text()
    assert text in run.stdout  # printed and written
    rows = [line for line in text.splitlines() if line.startswith(("| POST", "| GET"))]
    assert len(rows) == 6  # 4 measurements (2 operations x 2 servers) and 2 ratios
    sse = [line for line in text.splitlines() if line.startswith("| 6 |")]
    assert len(sse) == 1
    cells = [cell.strip() for cell in sse[0].strip("|").split("|")]
    assert cells[:4] == ["6", "21", "42", "yes, in every run"]

"""Figures of the reliability tests, for ``docs/reliability.md``.

A test calls `record(test, **figures)` with what it tried and what it found (goals, kills,
steps re-run, goals lost …). With ``GOALKIT_FIGURES=path.jsonl`` in the environment each call
appends one JSON line to that file; without it, nothing is written. The docs page quotes the
figures of the last run made this way (see "Running the soak variants" there).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any


def record(test: str, **figures: Any) -> None:
    """Append `figures` of `test` to ``$GOALKIT_FIGURES`` (if set)."""
    path = os.environ.get("GOALKIT_FIGURES")
    if not path:
        return
    line = json.dumps({"test": test, "at": round(time.time()), **figures}, sort_keys=True)
    with open(path, "a", encoding="utf-8") as out:
        out.write(line + "\n")

"""What every benchmark table here prints the same way: a figure's spread, and the machine.

Imported by the scripts beside it (run as scripts, their folder is first on ``sys.path``).
"""

from __future__ import annotations

import os
import platform
import sqlite3
import statistics
from collections.abc import Iterable


def spread(values: Iterable[float], fmt: str = "{:,.0f}") -> str:
    """The median of `values` in `fmt`, with (min–max) when there is more than one."""
    values = list(values)
    text = fmt.format(statistics.median(values))
    if len(values) > 1:
        text += f" ({fmt.format(min(values))}–{fmt.format(max(values))})"
    return text


def machine() -> str:
    """The line saying what the figures were measured on."""
    return (
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs."
    )

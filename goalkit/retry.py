"""The retry policy: a small frozen value and pure functions, no I/O, no clock."""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs

__all__ = ["RetryPolicy", "will_retry"]


def will_retry(attempts: int, max_retries: int) -> bool:
    """Whether a step that failed on attempt number `attempts` gets another attempt.

    A step that keeps failing gets ``1 + max_retries`` attempts. An attempt cut short by a
    crash counts (SPEC §6: "its attempt counted"), but the interrupted step is always run
    again on resume; if that attempt fails, only the retries left are granted. A step that
    kills its process every time is bounded elsewhere, by `GoalManager(max_recoveries=...)`.
    """
    return attempts <= max_retries


@attrs.frozen
class RetryPolicy:
    """Exponential backoff with jitter: ``base * factor ** (attempt - 1)``, capped.

    The jitter draws the delay uniformly from ``[(1 - jitter) * d, d]``, so retries of many
    goals that failed together (a provider outage) spread out instead of arriving at once.
    """

    base: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))
    factor: float = attrs.field(default=2.0, validator=attrs.validators.ge(1))
    cap: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    jitter: float = attrs.field(
        default=0.5, validator=[attrs.validators.ge(0), attrs.validators.le(1)]
    )

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        full = min(self.cap, self.base * self.factor ** max(attempt - 1, 0))
        return full * (1 - self.jitter * rand())

"""The error hierarchy: every error goalkit raises on purpose is a `GoalkitError`.

Each class carries the HTTP status and the machine-readable `code` it maps to, so the ASGI
adapter can turn any of them into an error envelope without a lookup table of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from goalkit.models import Usage

__all__ = [
    "Forbidden",
    "GoalConflict",
    "GoalNotFound",
    "GoalkitError",
    "InvalidGoal",
    "LeaseLost",
    "LimitExceeded",
    "NotAuthenticated",
    "PluginError",
    "ProviderError",
    "StorageError",
]


class GoalkitError(Exception):
    """Base class of every goalkit error; `status` is the HTTP status it maps to."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidGoal(GoalkitError):
    """A creation field or query value broke a rule; `field` names it."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class NotAuthenticated(GoalkitError):
    """No credentials, or credentials that match no principal."""

    status = 401
    code = "not_authenticated"


class Forbidden(GoalkitError):
    """The principal may not act on this goal (it belongs to another user)."""

    status = 403
    code = "forbidden"


class GoalNotFound(GoalkitError):
    """No goal has this id."""

    status = 404
    code = "not_found"

    def __init__(self, goal_id: str) -> None:
        super().__init__(f"goal {goal_id!r} not found")
        self.goal_id = goal_id


class GoalConflict(GoalkitError):
    """The goal's state forbids the request, e.g. cancelling a goal that already ended."""

    status = 409
    code = "conflict"


class LimitExceeded(GoalkitError):
    """A configured cap was reached, e.g. a user's number of active goals; try again later.

    `retry_after` is the number of seconds a client is told to wait (HTTP ``Retry-After``).
    """

    status = 429
    code = "limit_exceeded"

    def __init__(self, message: str, *, retry_after: int = 10) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PluginError(GoalkitError):
    """A plugin is malformed (unknown hook name) or answered with something unusable."""

    code = "plugin_error"


class ProviderError(GoalkitError):
    """A model provider's call failed; `retryable` says whether another attempt may help.

    Providers raise it to steer the engine: ``retryable=False`` (a rejected API key, an
    invalid request) fails the step at once instead of spending its retries, and
    `retry_after` (seconds, from a ``Retry-After`` header) stretches the backoff before the
    next attempt. Any other exception from a provider is retried as usual. `usage` reports
    the tokens a call used although it failed (an answer that came back malformed), so they
    count on the step, the goal and its budget.
    """

    code = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        retry_after: float | None = None,
        usage: Usage | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.usage = usage


class StorageError(GoalkitError):
    """The storage backend failed (I/O error, locked database, bad URL)."""

    code = "storage_error"


class LeaseLost(StorageError):
    """A write was refused because this manager no longer holds the goal's lease.

    This is the fence that keeps a stale owner (a process frozen past its lease while another
    took its goals over) from writing results. The engine treats it as "stop quietly".
    """

    code = "lease_lost"

"""The HTTP API's routes as data: each path, its operations, and the parameters they read.

One table for both sides. `goalkit.asgi.app` matches requests against it and checks every
path, query and header parameter with it; `goalkit.asgi.openapi` writes the document's paths
and parameters from it. A parameter's rule (`parse`) and its JSON Schema (`schema`) live on
the same small object, so the document cannot say one thing while the server does another.
The request body is not here: its rules are `goalkit.models.validate_goal_spec`.

The table also says which query parameters exist, which `RedactQueries` uses to keep
whatever else a client puts in a URL (a token, say) out of access logs.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal, Protocol
from urllib.parse import unquote_plus

import attrs

from goalkit.asgi.http import DIGITS, HTTPError, bad_request
from goalkit.models import (
    IDEMPOTENCY_KEY_PATTERN,
    MAX_IDEMPOTENCY_KEY,
    MAX_LIMIT,
    MAX_OWNER_LENGTH,
    MAX_TAG_LENGTH,
    STATUSES,
    decode_cursor,
    is_unicode,
    validate_idempotency_key,
)

__all__ = [
    "MAX_GOAL_ID",
    "MAX_INTEGER",
    "QUERY_NAMES",
    "ROUTES",
    "Choice",
    "Cursor",
    "Digits",
    "GoalId",
    "IdempotencyKey",
    "Integer",
    "Kind",
    "Operation",
    "Param",
    "RedactQueries",
    "Route",
    "Text",
    "redact_query",
]

MAX_INTEGER = 2**53 - 1
"""The largest offset, event id or token budget accepted: the largest integer JSON clients
(JavaScript) hold exactly, and far inside what storage backends can bind."""
MAX_GOAL_ID = 64
"""The longest goal id a path may carry; goalkit's own are 21 characters (``goal-`` + 16
hex digits). A longer one is a 404 that does not repeat it."""


class Kind(Protocol):
    """What a parameter's value may be: the rule the server applies and the schema it states."""

    def parse(self, name: str, text: str) -> Any:
        """The value of `text`, or raise the error answer (naming `name`)."""
        ...

    def schema(self) -> dict[str, Any]:
        """The JSON Schema of the parameter in the OpenAPI document."""
        ...


@attrs.frozen
class Integer:
    """A decimal integer from `low` to `high` in ASCII digits (no sign, no spaces)."""

    low: int
    high: int
    default: int

    def parse(self, name: str, text: str) -> int:
        # The length check first: int() refuses (ValueError) strings of over 4,300 digits.
        if (
            len(text) > len(str(self.high))
            or not DIGITS.fullmatch(text)
            or not self.low <= int(text) <= self.high
        ):
            raise bad_request(name, f"must be an integer from {self.low} to {self.high}")
        return int(text)

    def schema(self) -> dict[str, Any]:
        return {
            "type": "integer",
            "minimum": self.low,
            "maximum": self.high,
            "default": self.default,
        }


@attrs.frozen
class Digits:
    """A non-negative integer sent as a header value: 1 to `max_digits` ASCII digits."""

    max_digits: int

    def parse(self, name: str, text: str) -> int:
        if len(text) > self.max_digits or not DIGITS.fullmatch(text):
            raise bad_request(
                name, f"must be a non-negative integer of at most {self.max_digits} digits"
            )
        return int(text)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": f"^[0-9]{{1,{self.max_digits}}}$"}


@attrs.frozen
class Choice:
    """One of a fixed set of words."""

    values: tuple[str, ...]

    def parse(self, name: str, text: str) -> str:
        if text not in self.values:
            raise bad_request(name, f"must be one of {', '.join(self.values)}")
        return text

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.values)}


@attrs.frozen
class Text:
    """1 to `max_length` characters, taken as given."""

    max_length: int

    def parse(self, name: str, text: str) -> str:
        if not 1 <= len(text) <= self.max_length:
            raise bad_request(name, f"must be 1 to {self.max_length} characters")
        return text

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "minLength": 1, "maxLength": self.max_length}


@attrs.frozen
class IdempotencyKey:
    """An idempotency key, by `goalkit.models.validate_idempotency_key`'s rule."""

    def parse(self, name: str, text: str) -> str:
        return validate_idempotency_key(text, field=name)

    def schema(self) -> dict[str, Any]:
        return {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_IDEMPOTENCY_KEY,
            "pattern": IDEMPOTENCY_KEY_PATTERN,
        }


@attrs.frozen
class Cursor:
    """A listing's cursor, by `goalkit.models.decode_cursor`'s rule; passed on as given."""

    def parse(self, name: str, text: str) -> str:
        decode_cursor(text, field=name)
        return text

    def schema(self) -> dict[str, Any]:
        # No pattern: a cursor holds a check of itself, which no pattern can state, so the
        # schema names a format instead (test generators are given real cursors for it).
        return {"type": "string", "format": "goalkit-cursor"}


@attrs.frozen
class GoalId:
    """A goal id in a path: at most `MAX_GOAL_ID` characters, else no goal has it (404)."""

    def parse(self, name: str, text: str) -> str:
        if len(text) > MAX_GOAL_ID or not is_unicode(text):
            # Not echoed: the point of the limit is not to repeat whatever was sent.
            raise HTTPError(
                404, "not_found", f"no goal has this id (ids are at most {MAX_GOAL_ID} characters)"
            )
        return text

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "minLength": 1, "maxLength": MAX_GOAL_ID, "pattern": "^[^/]+$"}


@attrs.frozen
class Param:
    """A path, query or header parameter: its name, where it is sent, rule and description."""

    name: str
    where: Literal["path", "query", "header"]
    kind: Kind
    description: str

    @property
    def default(self) -> Any:
        """The value of the parameter when it is not sent."""
        return getattr(self.kind, "default", None)


@attrs.frozen
class Operation:
    """One method on a path; `public` operations need no bearer token."""

    method: str
    operation_id: str
    params: tuple[Param, ...] = ()
    public: bool = False


def _compile(path: str) -> re.Pattern[str]:
    # "/api/v1/goals/{goal_id}" -> "/api/v1/goals/(?P<goal_id>[^/]+)"; lengths are the
    # parameter's to check (a 404 of its own), not the pattern's.
    parts = re.split(r"\{(\w+)\}", path)
    regex = "".join(
        f"(?P<{part}>[^/]+)" if i % 2 else re.escape(part) for i, part in enumerate(parts)
    )
    return re.compile(regex)


@attrs.frozen
class Route:
    """A path template with its path parameters and the operations it serves."""

    path: str
    operations: tuple[Operation, ...]
    params: tuple[Param, ...] = ()
    pattern: re.Pattern[str] = attrs.field(init=False)

    @pattern.default
    def _pattern(self) -> re.Pattern[str]:
        return _compile(self.path)

    @property
    def allow(self) -> str:
        """The value of an ``Allow`` header for this path."""
        return ", ".join(operation.method for operation in self.operations)

    def operation(self, method: str) -> Operation | None:
        """The operation serving `method` here, if any."""
        for operation in self.operations:
            if operation.method == method:
                return operation
        return None


GOAL_ID = Param("goal_id", "path", GoalId(), "The goal's id (`goal-…`).")

ROUTES: tuple[Route, ...] = (
    Route(
        "/api/v1/goals",
        (
            Operation(
                "GET",
                "listGoals",
                (
                    Param("status", "query", Choice(STATUSES), "Only this status."),
                    Param("tag", "query", Text(MAX_TAG_LENGTH), "Only goals with this tag."),
                    Param("limit", "query", Integer(1, MAX_LIMIT, 50), "Page size."),
                    Param(
                        "offset",
                        "query",
                        Integer(0, MAX_INTEGER, 0),
                        "Goals to skip. Not with `cursor`.",
                    ),
                    Param(
                        "cursor",
                        "query",
                        Cursor(),
                        "The `meta.next_cursor` of the page before, as given: this page "
                        "goes on below that page's last goal, whatever was created since. "
                        "Not with `offset`.",
                    ),
                    Param(
                        "owner",
                        "query",
                        Text(MAX_OWNER_LENGTH),
                        "Admins only: only this user's goals (others: 403 unless their own).",
                    ),
                ),
            ),
            Operation(
                "POST",
                "createGoal",
                (
                    Param(
                        "Idempotency-Key",
                        "header",
                        IdempotencyKey(),
                        "Repeating a key (same user) returns the goal it created; the same "
                        "key with another body is a 409. Sent at most once.",
                    ),
                ),
            ),
        ),
    ),
    Route(
        "/api/v1/goals/{goal_id}",
        (Operation("GET", "getGoal"), Operation("DELETE", "cancelGoal")),
        (GOAL_ID,),
    ),
    Route(
        "/api/v1/goals/{goal_id}/events",
        (
            Operation(
                "GET",
                "goalEvents",
                (
                    Param(
                        "after",
                        "query",
                        Integer(0, MAX_INTEGER, 0),
                        "Replay the events numbered above this.",
                    ),
                    Param(
                        "Last-Event-ID",
                        "header",
                        Digits(15),  # 15 digits stay below MAX_INTEGER
                        "The last event id seen (sent by EventSource on reconnect); wins "
                        "over `after`. Sent at most once.",
                    ),
                ),
            ),
        ),
        (GOAL_ID,),
    ),
    Route("/api/v1/openapi.json", (Operation("GET", "openapi", public=True),)),
)
"""Every path the API serves, in the order the router tries them."""


QUERY_NAMES = frozenset(
    param.name
    for route in ROUTES
    for operation in route.operations
    for param in operation.params
    if param.where == "query"
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,31}")


def redact_query(query: str) -> str:
    """`query` (a raw query string) with what the API does not read replaced by
    ``<redacted>``: the value of an unknown parameter, or the whole of an odd one.

    A client that puts its token in the URL (``?access_token=…``, or the token alone) gets a
    400, but its request line still reaches the server's access log; this keeps the token
    out of it, in any encoding. The API's own parameters are shown as sent.
    """
    parts = []
    for pair in query.split("&"):
        name, equals, _ = pair.partition("=")
        if not pair or unquote_plus(name) in QUERY_NAMES:
            parts.append(pair)
        elif equals and _NAME.fullmatch(name):
            parts.append(f"{name}=<redacted>")
        else:
            parts.append("<redacted>")
    return "&".join(parts)


class RedactQueries(logging.Filter):
    """A logging filter for uvicorn's access log (``uvicorn.access``) that passes each
    request line's query string through `redact_query`; ``goalkit serve`` installs it."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn's access record: (client, method, path with query, HTTP version, status).
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            path, mark, query = args[2].partition("?")
            if mark:
                record.args = (*args[:2], f"{path}?{redact_query(query)}", *args[3:])
        return True

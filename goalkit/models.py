"""Goals, steps and events as immutable values, plus validation of creation fields.

`validate_goal_spec` and `validate_idempotency_key` are the one set of creation rules:
`GoalManager.create` applies them, the HTTP layer adds only JSON-specific checks (unknown
fields, null) on top, and the OpenAPI document states the same rules through `BLANK` and
`text_pattern`, so the document, the HTTP API and the Python API agree on every input.

Nothing here does I/O. The state machine that moves these values from one state to the next
lives in `goalkit.transitions`; storage backends persist them, the engine drives them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

import attrs

from goalkit.errors import InvalidGoal

__all__ = [
    "BLANK",
    "CURSOR_PATTERN",
    "IDEMPOTENCY_KEY_PATTERN",
    "JSON",
    "MAX_DESCRIPTION",
    "MAX_IDEMPOTENCY_KEY",
    "MAX_LIMIT",
    "MAX_MODEL_LENGTH",
    "MAX_OWNER_LENGTH",
    "MAX_RETRIES",
    "MAX_STEPS",
    "MAX_TAGS",
    "MAX_TAG_LENGTH",
    "MAX_TOKENS",
    "MODES",
    "STATUSES",
    "STEP_DELTA",
    "TERMINAL_EVENTS",
    "Answer",
    "ErrorInfo",
    "Event",
    "Goal",
    "GoalSpec",
    "Page",
    "Phase",
    "Principal",
    "Status",
    "Step",
    "StepSpec",
    "StepStatus",
    "Usage",
    "check_json",
    "decode_cursor",
    "encode_cursor",
    "is_unicode",
    "new_goal_id",
    "new_workflow_id",
    "text_pattern",
    "validate_goal_spec",
    "validate_idempotency_key",
    "validate_list_query",
    "validate_plan",
]

JSON: TypeAlias = Any
"""A value `json.dumps` accepts: None, bool, int, float, str, list or dict of these."""

Status = Literal["active", "completed", "failed", "cancelled"]
Phase = Literal["created", "decomposing", "running", "completed", "failed", "cancelled"]
StepStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
Mode = Literal["plan", "direct"]

STATUSES: tuple[Status, ...] = ("active", "completed", "failed", "cancelled")
MODES: tuple[Mode, ...] = ("plan", "direct")
TERMINAL_EVENTS = frozenset({"goal.completed", "goal.failed", "goal.cancelled"})
STEP_DELTA = "goal.step_delta"
"""The type of the live-only events that carry streamed text; never stored, `id` 0."""

MAX_DESCRIPTION = 10_000
MAX_STEPS = 100
MAX_RETRIES = 10
MAX_TAGS = 20
MAX_TAG_LENGTH = 64
MAX_MODEL_LENGTH = 200
MAX_OWNER_LENGTH = 200
MAX_LIMIT = 500
"""The largest page `GoalManager.list` (and ``GET /api/v1/goals``) returns."""
MAX_IDEMPOTENCY_KEY = 255
MAX_TOKENS = 2**53 - 1
"""The largest token budget (`max_tokens`): the largest integer JSON clients hold exactly."""

BLANK = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)
"""The characters stripped from both ends of text fields; a text made only of them is blank.

Spelled out rather than left to ``str.strip()`` or a regex's ``\\s``: Python's whitespace
includes ``\\x1c``–``\\x1f`` and ``\\x85``, JavaScript's (and the ECMA regexes JSON Schema
validators use) includes ``\\ufeff`` instead, so a ``\\S`` pattern meant something different to
the server and to an OpenAPI client. This is the union of both, used by both sides.
"""

IDEMPOTENCY_KEY_PATTERN = rf"^[!-~](?:[ -~]{{0,{MAX_IDEMPOTENCY_KEY - 2}}}[!-~])?$"
"""An idempotency key: 1 to 255 printable ASCII characters, no space at either end (HTTP
servers strip those from header values, so such a key could not survive a round trip)."""


def _time_ordered() -> str:
    # The creation time in milliseconds, then 64 random bits: ids made close together sort
    # close together, so the rows of goals that run at the same time share B-tree pages and
    # a group commit writes a few pages instead of one per goal and table (measured: 30 % less
    # storage CPU per goal with 100 in flight); the random part keeps them unguessable.
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"


def new_goal_id() -> str:
    """Return a fresh, unguessable goal id such as ``goal-019a3c5e7d41b7e2c94f0a6d3e58``.

    Ids sort by creation time (to the millisecond), which keeps the storage compact.
    """
    return f"goal-{_time_ordered()}"


def new_workflow_id() -> str:
    """Return a fresh workflow id such as ``wf-019a3c5e7d41e81f3b2a9c07d64e``."""
    return f"wf-{_time_ordered()}"


@attrs.frozen
class ErrorInfo:
    """Why a step or goal failed: a machine-readable `code` and a human `message`."""

    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErrorInfo:
        return cls(code=str(data["code"]), message=str(data["message"]))


def _count(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{attribute.name} must be an integer of at least 0, got {value!r}")


@attrs.frozen
class Usage:
    """Tokens used by provider calls, as the model APIs report them.

    Values add up (``a + b``); `Goal.usage` is the sum over every call of the goal, planning
    included, and `Step.usage` the sum over the attempts of one step.
    """

    input_tokens: int = attrs.field(default=0, validator=_count)
    output_tokens: int = attrs.field(default=0, validator=_count)

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens: what a goal's `max_tokens` budget counts."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
        }


NO_USAGE = Usage()


@attrs.frozen
class Answer:
    """What a provider's `plan`, `run_step` or `stream_step` may return to report its usage.

    `value` is what the method would otherwise return (the plan, or the step's JSON result);
    `usage` the tokens the call used. Returning the bare value stays valid and counts as no
    tokens.
    """

    value: Any
    usage: Usage = attrs.field(default=NO_USAGE, validator=attrs.validators.instance_of(Usage))


@attrs.frozen
class StepSpec:
    """One step of a plan, as a provider's `plan` may return it (plain strings work too)."""

    title: str
    description: str | None = None


@attrs.frozen
class Principal:
    """An authenticated user; admins see and act on every goal."""

    user: str
    admin: bool = False


@attrs.frozen
class Step:
    """One unit of work of a goal, executed by one provider call per attempt."""

    index: int
    """1-based position: "Step N"."""
    title: str
    description: str | None = None
    status: StepStatus = "pending"
    attempts: int = 0
    result: JSON = None
    error: ErrorInfo | None = None
    started_at: int | None = None
    completed_at: int | None = None
    usage: Usage = NO_USAGE
    """Tokens used by every attempt of this step that reported usage."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "title": self.title,
            "description": self.description,
            "status": self.status,
            "attempts": self.attempts,
            "result": self.result,
            "error": self.error.to_dict() if self.error else None,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "usage": self.usage.to_dict(),
        }


@attrs.frozen
class Goal:
    """A persistent objective and the state of the workflow that drives it.

    `steps` is filled by `GoalManager.get`; listings leave it empty. `last_event_id` is the
    number of the goal's newest stored event. `max_tokens` is the goal's token budget (None:
    no budget) and `usage` the tokens its provider calls used so far, planning included.
    `recoveries` counts how many times in a row the
    goal was taken over from a manager that stopped holding it (a crash, a freeze, a lost
    lease) without a step completing since; it bounds crash loops (poison goals) and, like
    `last_event_id`, is bookkeeping outside the JSON form.
    """

    id: str
    workflow_id: str
    description: str
    model: str
    mode: Mode
    max_steps: int
    max_retries: int
    tags: tuple[str, ...]
    owner: str
    status: Status
    phase: Phase
    created_at: int
    updated_at: int
    total_steps: int = 0
    steps_completed: int = 0
    current_step: int | None = None
    result: JSON = None
    error: ErrorInfo | None = None
    completed_at: int | None = None
    last_event_id: int = 0
    steps: tuple[Step, ...] = ()
    max_tokens: int | None = None
    usage: Usage = NO_USAGE
    recoveries: int = 0

    @property
    def done(self) -> bool:
        """True once the goal is completed, failed or cancelled."""
        return self.status != "active"

    @property
    def tokens_left(self) -> int | None:
        """What is left of the budget (0 when used up), or None when the goal has none.

        Providers cap the output of each call at this (the APIs' ``max_tokens``).
        """
        if self.max_tokens is None:
            return None
        return max(self.max_tokens - self.usage.total_tokens, 0)

    def to_dict(self, *, full: bool = True) -> dict[str, Any]:
        """The goal's JSON form; ``full=False`` leaves out the step history."""
        data: dict[str, Any] = {
            "id": self.id,
            "description": self.description,
            "model": self.model,
            "mode": self.mode,
            "max_steps": self.max_steps,
            "max_retries": self.max_retries,
            "max_tokens": self.max_tokens,
            "tags": list(self.tags),
            "owner": self.owner,
            "status": self.status,
            "phase": self.phase,
            "workflow_id": self.workflow_id,
            "steps_completed": self.steps_completed,
            "total_steps": self.total_steps,
            "current_step": self.current_step,
            "usage": self.usage.to_dict(),
            "result": self.result,
            "error": self.error.to_dict() if self.error else None,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "completed_at": self.completed_at,
        }
        if full:
            data["steps"] = [step.to_dict() for step in self.steps]
        return data


@attrs.frozen
class Event:
    """An immutable record of one transition, numbered per goal 1, 2, 3 … without gaps."""

    id: int
    type: str
    goal_id: str
    workflow_id: str
    ts: float
    data: Mapping[str, JSON] = attrs.field(factory=dict)

    @property
    def terminal(self) -> bool:
        """True for `goal.completed`, `goal.failed` and `goal.cancelled`."""
        return self.type in TERMINAL_EVENTS

    @property
    def durable(self) -> bool:
        """False for live-only events (`goal.step_delta`, `id` 0), which are never stored."""
        return self.id > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "goal_id": self.goal_id,
            "workflow_id": self.workflow_id,
            "ts": self.ts,
            "data": dict(self.data),
        }


@attrs.frozen
class Page:
    """One page of a listing: the goals, newest first, and the total that matched.

    `offset` is the offset the page was asked for with (None when it was asked for with a
    cursor). `next_cursor` continues the listing just below this page's last goal (pass it
    as ``cursor=``); None on the last page.
    """

    items: tuple[Goal, ...]
    total: int
    limit: int
    offset: int | None
    next_cursor: str | None = None


@attrs.frozen
class GoalSpec:
    """Validated creation fields of a goal (see `validate_goal_spec`)."""

    description: str
    model: str
    mode: Mode
    max_steps: int
    max_retries: int
    tags: tuple[str, ...]
    owner: str
    max_tokens: int | None = None


def text_pattern(max_length: int) -> str:
    """The JSON Schema ``pattern`` of a text field of 1 to `max_length` characters once
    `BLANK` is stripped from both ends: exactly what `validate_goal_spec` accepts.

    Written with explicit character classes only, so ECMA (JSON Schema) and Python regexes
    read it the same way.
    """
    if max_length < 2:
        raise ValueError("max_length must be at least 2")
    blank, solid = f"[{BLANK}]", f"[^{BLANK}]"
    return f"^{blank}*{solid}(?:[\\s\\S]{{0,{max_length - 2}}}{solid})?{blank}*$"


def is_unicode(text: str) -> bool:
    """False for a str holding a lone surrogate (valid in JSON and Python, not in UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _int_field(name: str, value: object, low: int, high: int) -> int:
    # bool is an int subclass; True as max_steps is a client bug, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidGoal(f"must be an integer from {low} to {high}", field=name)
    if not low <= value <= high:
        raise InvalidGoal(f"must be from {low} to {high}, got {value}", field=name)
    return value


def _text_field(name: str, value: object, max_length: int, what: str = "") -> str:
    if not isinstance(value, str):
        raise InvalidGoal(f"{what}must be a string", field=name)
    if not is_unicode(value):
        raise InvalidGoal(
            f"{what}must be valid Unicode text (it holds a lone surrogate)", field=name
        )
    text = value.strip(BLANK)
    if not text:
        raise InvalidGoal(f"{what}must not be empty or blank", field=name)
    if len(text) > max_length:
        raise InvalidGoal(
            f"{what}must be at most {max_length} characters after stripping, got {len(text)}",
            field=name,
        )
    return text


def validate_goal_spec(
    *,
    description: object,
    model: object,
    mode: object = "plan",
    max_steps: object = 10,
    max_retries: object = 2,
    tags: object = (),
    owner: object = "local",
    max_tokens: object = None,
) -> GoalSpec:
    """Check every creation field and return them normalised, or raise `InvalidGoal`.

    The rules: description 1–10,000 characters, model 1–200 and owner 1–200, each counted
    after stripping `BLANK` from both ends (and valid Unicode); mode ``plan`` or ``direct``;
    max_steps 1–100; max_retries 0–10; at most 20 tags given, each 1–64 characters after
    stripping (stored stripped, duplicates dropped, order kept); max_tokens None (no budget)
    or an integer from 1 to 2**53 - 1. The error names the field and the rule.
    """
    text = _text_field("description", description, MAX_DESCRIPTION)
    model_name = _text_field("model", model, MAX_MODEL_LENGTH)
    if mode not in MODES:
        raise InvalidGoal(f"must be one of {', '.join(MODES)}, got {mode!r}", field="mode")
    steps = _int_field("max_steps", max_steps, 1, MAX_STEPS)
    retries = _int_field("max_retries", max_retries, 0, MAX_RETRIES)
    clean_tags = _validate_tags(tags)
    who = _text_field("owner", owner, MAX_OWNER_LENGTH)
    budget = None if max_tokens is None else _int_field("max_tokens", max_tokens, 1, MAX_TOKENS)
    return GoalSpec(
        description=text,
        model=model_name,
        mode=mode,
        max_steps=steps,
        max_retries=retries,
        tags=clean_tags,
        owner=who,
        max_tokens=budget,
    )


def _validate_tags(tags: object) -> tuple[str, ...]:
    if isinstance(tags, (str, bytes, Mapping)) or not isinstance(tags, Iterable):
        raise InvalidGoal("must be a list of strings", field="tags")
    given = list(tags)
    # The count is of the tags given, duplicates included: the rule a JSON Schema
    # ``maxItems`` states, so the OpenAPI document and the server agree on every list.
    if len(given) > MAX_TAGS:
        raise InvalidGoal(f"at most {MAX_TAGS} tags, got {len(given)}", field="tags")
    seen: dict[str, None] = {}
    for i, tag in enumerate(given):
        seen[_text_field("tags", tag, MAX_TAG_LENGTH, what=f"item {i} ")] = None
    return tuple(seen)


def validate_idempotency_key(key: object, *, field: str = "idempotency_key") -> str:
    """Return `key` if it is a valid idempotency key, else raise `InvalidGoal` naming `field`.

    A key is 1 to 255 printable ASCII characters with no space at either end (see
    `IDEMPOTENCY_KEY_PATTERN`); the HTTP layer passes ``field="Idempotency-Key"``.
    """
    if not isinstance(key, str) or not _IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidGoal(
            f"must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters, "
            "without a space at either end",
            field=field,
        )
    return key


_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


# -- listings ----------------------------------------------------------------------------------

CURSOR_PATTERN = "^[A-Za-z0-9_-]{16}$"
"""What every cursor looks like (base64url, 16 characters); not every such text is one."""
_CURSOR = re.compile(CURSOR_PATTERN)
_CURSOR_PERSON = b"goalkit-cursor"


def _cursor_check(position: bytes) -> bytes:
    return hashlib.blake2b(position, digest_size=4, person=_CURSOR_PERSON).digest()


def encode_cursor(seq: int) -> str:
    """The cursor of a listing that continues below the goal stored `seq`-th: what storage
    backends put in `Page.next_cursor`.

    Opaque to clients: the position and a check of it, so that a cursor mangled on its way
    (cut, edited, another API's token) is refused by `decode_cursor` rather than read as
    some other position. The check is not a secret: a cursor grants nothing, the listing's
    filters (its owner above all) still apply.
    """
    position = seq.to_bytes(8, "big")
    return base64.urlsafe_b64encode(_cursor_check(position) + position).decode("ascii")


def decode_cursor(cursor: object, *, field: str = "cursor") -> int:
    """The position (a goal's storage sequence number) `cursor` continues below, or raise
    `InvalidGoal` naming `field` if it is not a cursor `encode_cursor` made."""
    if isinstance(cursor, str) and _CURSOR.fullmatch(cursor):
        raw = base64.urlsafe_b64decode(cursor)
        check, position = raw[:4], raw[4:]
        seq = int.from_bytes(position, "big")
        # Below 2**63: the check is no secret, so a forged cursor may hold any 8 bytes, and
        # SQLite cannot bind a larger integer.
        if hmac.compare_digest(check, _cursor_check(position)) and 1 <= seq < 2**63:
            return seq
    raise InvalidGoal("must be the next_cursor of an earlier page, as it was given", field=field)


def validate_list_query(
    *, status: object = None, limit: object = 50, offset: object = None, cursor: object = None
) -> None:
    """Check the paging and filter arguments of a listing, or raise `InvalidGoal` naming the
    field: status one of `STATUSES` (or None), limit 1 to `MAX_LIMIT`, offset None or at least
    0, cursor None or a cursor (`decode_cursor`), and not both an offset and a cursor.

    `GoalManager.list` applies these. The HTTP layer checks each query value as it parses it
    (`goalkit.asgi.routes`: the same limits, and `decode_cursor` itself) and leaves the
    combination of cursor and offset to `GoalManager.list`.
    """
    if status is not None and status not in STATUSES:
        raise InvalidGoal(f"must be one of {', '.join(STATUSES)}, got {status!r}", field="status")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidGoal(f"must be an integer from 1 to {MAX_LIMIT}", field="limit")
    if offset is not None and (
        isinstance(offset, bool) or not isinstance(offset, int) or offset < 0
    ):
        raise InvalidGoal("must be an integer of at least 0", field="offset")
    if cursor is not None:
        decode_cursor(cursor)
        if offset is not None:
            raise InvalidGoal(
                "give either cursor or offset, not both (a cursor already says where the "
                "page starts)",
                field="cursor",
            )


def validate_plan(plan: object, max_steps: int) -> tuple[StepSpec, ...]:
    """Turn a provider's plan into step specs, or raise ValueError saying what is wrong."""
    if isinstance(plan, (str, bytes, Mapping)) or not isinstance(plan, Sequence):
        raise ValueError(f"plan must be a list of strings or StepSpec, got {type(plan).__name__}")
    if not plan:
        raise ValueError("plan is empty")
    if len(plan) > max_steps:
        raise ValueError(f"plan has {len(plan)} steps, more than max_steps={max_steps}")
    specs: list[StepSpec] = []
    for i, item in enumerate(plan, start=1):
        if isinstance(item, str):
            item = StepSpec(title=item)
        if not isinstance(item, StepSpec):
            raise ValueError(f"plan step {i} is a {type(item).__name__}, not a str or StepSpec")
        if not isinstance(item.title, str):
            raise ValueError(f"plan step {i} has a title that is not a string")
        if not item.title.strip():
            raise ValueError(f"plan step {i} has an empty title")
        if item.description is not None and not isinstance(item.description, str):
            raise ValueError(f"plan step {i} has a description that is not a string")
        specs.append(
            StepSpec(title=item.title.strip()[:MAX_DESCRIPTION], description=item.description)
        )
    return tuple(specs)


def check_json(value: object) -> JSON:
    """Return `value` if it can be stored as JSON (no NaN, no objects), else raise ValueError."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"result is not JSON-serialisable: {exc}") from None
    return value

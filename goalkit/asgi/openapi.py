"""The OpenAPI 3.1 document of the HTTP API, built from data.

Nothing in it is restated: the paths and their parameters come from the route table the
router uses (`goalkit.asgi.routes`), and the body's limits from `goalkit.models`, text fields
through `text_pattern` (the exact rule `validate_goal_spec` applies, blank characters
included), so the document cannot drift from the code; `tests/test_openapi.py` runs
schemathesis over it against the app and checks that the document and the server agree on
every body.
"""

from __future__ import annotations

from typing import Any

import goalkit
from goalkit.asgi.routes import ROUTES, Param
from goalkit.models import (
    MAX_DESCRIPTION,
    MAX_MODEL_LENGTH,
    MAX_RETRIES,
    MAX_STEPS,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MAX_TOKENS,
    MODES,
    STATUSES,
    STEP_DELTA,
    TERMINAL_EVENTS,
    text_pattern,
)

__all__ = ["document"]

STEP_STATUSES = ["pending", "running", "completed", "failed", "cancelled"]
PHASES = ["created", "decomposing", "running", "completed", "failed", "cancelled"]
EVENT_TYPES = [
    "goal.created",
    "goal.decomposed",
    "goal.step_started",
    "goal.step_completed",
    "goal.step_failed",
    *sorted(TERMINAL_EVENTS),
    STEP_DELTA,
]
GOAL_ERROR_CODES = [
    "step_failed",
    "step_error",
    "step_timeout",
    "plan_failed",
    "plan_timeout",
    "invalid_plan",
    "provider_unavailable",
    "budget_exceeded",
    "crash_loop",
]
"""The `error.code` values of a failed goal or step attempt (docs/concepts.md explains each)."""


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_INT = {"type": "integer"}
_TIME = {"type": ["integer", "null"], "description": "Unix seconds"}


def _text(max_length: int, description: str, example: str) -> dict[str, Any]:
    # No maxLength: the limit counts characters after stripping, which only the pattern says.
    # The example also spares generators (schemathesis) from solving the pattern for a value.
    return {
        "type": "string",
        "minLength": 1,
        "pattern": text_pattern(max_length),
        "examples": [example],
        "description": f"{description} 1 to {max_length:,} characters once blank characters "
        "are stripped from both ends (it is stored stripped).",
    }


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    if headers:
        response["headers"] = headers
    return response


_RETRY_AFTER = {
    "required": True,
    "description": "Seconds to wait before trying again.",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}

_ERRORS: dict[str, dict[str, Any]] = {
    "400": _error("Bad JSON, a bad field or a bad query value; `error.field` names it."),
    "401": _error(
        "Missing, malformed or unknown bearer token.",
        {
            "WWW-Authenticate": {
                "required": True,
                "description": "Always `Bearer`.",
                "schema": {"type": "string"},
            }
        },
    ),
    "403": _error("The goal belongs to another user (and you are not an admin)."),
    "404": _error("No goal has this id (or the id is over 64 characters)."),
    "408": _error("The request body did not arrive in time (10 s by default)."),
    "409": _error("The goal's state (or an earlier request) forbids this."),
    "413": _error("The request body exceeds the server's limit (64 KiB by default)."),
    "415": _error("The request body is not `application/json`."),
    "429": _error(
        "A per-user limit was reached: active goals (POST) or open event streams (GET …/events).",
        {"Retry-After": _RETRY_AFTER},
    ),
    "503": _error(
        "The server is shutting down; reconnect with your last event id.",
        {"Retry-After": _RETRY_AFTER},
    ),
    "500": _error("The server failed; the message is generic and the cause is logged."),
}


def _errors(*codes: str) -> dict[str, dict[str, Any]]:
    return {code: _ERRORS[code] for code in (*codes, "500")}


def _envelope(data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    properties = {"ok": {"const": True}, "data": data, **extra}
    return {"type": "object", "required": list(properties), "properties": properties}


def _parameter(param: Param) -> dict[str, Any]:
    return {
        "name": param.name,
        "in": param.where,
        "required": param.where == "path",
        "schema": param.kind.schema(),
        "description": param.description,
    }


def _schemas() -> dict[str, Any]:
    create_properties: dict[str, Any] = {
        "description": _text(MAX_DESCRIPTION, "What the goal should achieve:", "Write unit tests"),
        "model": _text(
            MAX_MODEL_LENGTH,
            "Model name; a provider plugin must serve it. Default: the server's.",
            "scripted",
        ),
        "mode": {"type": "string", "enum": list(MODES), "default": "plan"},
        "max_steps": {"type": "integer", "minimum": 1, "maximum": MAX_STEPS, "default": 10},
        "max_retries": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_RETRIES,
            "description": "Retries of a failed step. Default: the server's.",
        },
        "tags": {
            "type": "array",
            "maxItems": MAX_TAGS,
            "items": _text(MAX_TAG_LENGTH, "A label:", "qa"),
            "description": f"Labels, at most {MAX_TAGS} given; stored stripped, duplicates "
            "dropped.",
        },
    }
    create_properties["max_tokens"] = {
        "type": ["integer", "null"],
        "minimum": 1,
        "maximum": MAX_TOKENS,
        "description": "Total token budget over every provider call (planning included); "
        "null or absent: no budget. Past it the goal fails with `budget_exceeded`.",
    }
    goal_properties: dict[str, Any] = {
        "id": {"type": "string", "pattern": "^goal-"},
        "description": {"type": "string"},
        "model": {"type": "string"},
        "mode": {"type": "string", "enum": list(MODES)},
        "max_steps": _INT,
        "max_retries": _INT,
        "max_tokens": {"type": ["integer", "null"], "description": "The token budget, or null."},
        "tags": {"type": "array", "items": {"type": "string"}},
        "owner": {"type": "string"},
        "status": {"type": "string", "enum": list(STATUSES)},
        "phase": {"type": "string", "enum": PHASES},
        "workflow_id": {"type": "string", "pattern": "^wf-"},
        "steps_completed": _INT,
        "total_steps": _INT,
        "current_step": {"type": ["integer", "null"]},
        "usage": {**_ref("Usage"), "description": "Tokens of every call, planning included."},
        "result": {"description": "The final step's result (any JSON), or null."},
        "error": _nullable(_ref("ErrorInfo")),
        "created_at": _INT,
        "updated_at": _INT,
        "completed_at": _TIME,
    }
    step_properties: dict[str, Any] = {
        "index": {"type": "integer", "minimum": 1, "description": "1-based: Step N."},
        "title": {"type": "string"},
        "description": {"type": ["string", "null"]},
        "status": {"type": "string", "enum": STEP_STATUSES},
        "attempts": _INT,
        "result": {"description": "The step's result (any JSON), or null."},
        "error": _nullable(_ref("ErrorInfo")),
        "started_at": _TIME,
        "completed_at": _TIME,
        "usage": {**_ref("Usage"), "description": "Tokens of every attempt of this step."},
    }
    return {
        "GoalCreate": {
            "type": "object",
            "additionalProperties": False,
            "required": ["description"],
            "properties": create_properties,
        },
        "ErrorInfo": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "examples": GOAL_ERROR_CODES},
                "message": {"type": "string"},
            },
        },
        "Usage": {
            "type": "object",
            "description": "Tokens as the model APIs reported them.",
            "required": ["input_tokens", "output_tokens", "total_tokens"],
            "properties": {
                "input_tokens": {"type": "integer", "minimum": 0},
                "output_tokens": {"type": "integer", "minimum": 0},
                "total_tokens": {"type": "integer", "minimum": 0},
            },
        },
        "Goal": {
            "type": "object",
            "required": list(goal_properties),
            "properties": goal_properties,
        },
        "Step": {
            "type": "object",
            "required": list(step_properties),
            "properties": step_properties,
        },
        "GoalFull": {
            "allOf": [
                _ref("Goal"),
                {
                    "type": "object",
                    "required": ["steps"],
                    "properties": {"steps": {"type": "array", "items": _ref("Step")}},
                },
            ]
        },
        "Cancelled": {
            "type": "object",
            "required": ["id", "status", "steps_completed", "total_steps"],
            "properties": {
                "id": {"type": "string"},
                "status": {"const": "cancelled"},
                "steps_completed": _INT,
                "total_steps": _INT,
            },
        },
        "Meta": {
            "type": "object",
            "required": ["total", "limit", "offset", "next_cursor"],
            "properties": {
                "total": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Goals matching the filters, on every page.",
                },
                "limit": _INT,
                "offset": {
                    "type": ["integer", "null"],
                    "description": "The page's offset; null for a page asked for by cursor.",
                },
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "Send as `cursor` for the next page; null on the last.",
                },
            },
        },
        "Event": {
            "type": "object",
            "description": "The `data:` line of each server-sent event.",
            "required": ["id", "type", "goal_id", "workflow_id", "ts", "data"],
            "properties": {
                "id": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Per-goal number of a stored event; 0 for a live-only "
                    "`goal.step_delta`, which has no `id:` line.",
                },
                "type": {"type": "string", "enum": EVENT_TYPES},
                "goal_id": {"type": "string"},
                "workflow_id": {"type": "string"},
                "ts": {"type": "number"},
                "data": {"type": "object"},
            },
        },
        "Error": {
            "type": "object",
            "required": ["ok", "error"],
            "properties": {
                "ok": {"const": False},
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {
                            "type": "string",
                            "examples": [
                                "invalid_request",
                                "not_authenticated",
                                "forbidden",
                                "not_found",
                                "conflict",
                                "method_not_allowed",
                                "payload_too_large",
                                "request_timeout",
                                "unsupported_media_type",
                                "limit_exceeded",
                                "unavailable",
                                "internal_error",
                            ],
                        },
                        "message": {"type": "string"},
                        "field": {"type": "string", "description": "The field at fault (400)."},
                    },
                },
            },
        },
        "GoalResponse": _envelope(_ref("GoalFull")),
        "GoalList": _envelope({"type": "array", "items": _ref("Goal")}, meta=_ref("Meta")),
        "CancelResponse": _envelope(_ref("Cancelled")),
    }


def _json(schema: str, description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref(schema)}},
        **extra,
    }


def _operations() -> dict[str, dict[str, Any]]:
    """What the document says of each operation beyond its parameters, by operationId."""
    by_id = {"goal_id": "$response.body#/data/id"}
    return {
        "createGoal": {
            "summary": "Create a goal (owned by the caller) and start it",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("GoalCreate")}},
            },
            "responses": {
                "201": _json(
                    "GoalResponse",
                    "The goal (also for a repeated Idempotency-Key).",
                    headers={
                        "Location": {
                            "required": True,
                            "schema": {"type": "string"},
                            "description": "The goal's URL (percent-encoded).",
                        }
                    },
                    links={
                        "GetGoal": {"operationId": "getGoal", "parameters": by_id},
                        "CancelGoal": {"operationId": "cancelGoal", "parameters": by_id},
                        "GoalEvents": {"operationId": "goalEvents", "parameters": by_id},
                    },
                ),
                **_errors("400", "401", "403", "408", "409", "413", "415", "429"),
            },
        },
        "listGoals": {
            "summary": "List goals, newest first (non-admins: their own)",
            "description": "Page by `offset`, or by `cursor`: the `meta.next_cursor` of the "
            "page before, which continues below that page's last goal whatever was created "
            "since. `cursor` and `offset` exclude each other (both: a 400 naming `cursor`).",
            "responses": {
                "200": _json("GoalList", "A page of goals and its `meta`."),
                **_errors("400", "401", "403"),
            },
        },
        "getGoal": {
            "summary": "The goal in full: steps, their status, attempts, results and errors",
            "responses": {
                "200": _json("GoalResponse", "The goal with its steps."),
                **_errors("401", "403", "404"),
            },
        },
        "cancelGoal": {
            "summary": "Cancel the goal: stops its workflow and any in-flight step",
            "responses": {
                "200": _json("CancelResponse", "The goal was cancelled."),
                **_errors("401", "403", "404", "409"),
            },
        },
        "goalEvents": {
            "summary": "The goal's events as server-sent events: replay, then live",
            "description": "Each event is `id: N`, `event: TYPE`, `data: <Event JSON>`. "
            "The stream starts with a `retry:` line, sends `: keep-alive` comments while "
            "idle and ends after the terminal event. `Last-Event-ID` wins over `after`. "
            "A server whose manager has `live_output` on also sends `goal.step_delta` "
            "messages (streamed text) without an `id:` line; they are never replayed.",
            "responses": {
                "200": {
                    "description": "The event stream.",
                    "headers": {
                        "Cache-Control": {"schema": {"const": "no-cache"}},
                        "X-Accel-Buffering": {"schema": {"const": "no"}},
                    },
                    "content": {
                        "text/event-stream": {
                            # One message, as tools read an event stream's `schema`
                            # (OpenAPI 3.2's `itemSchema`, which 3.1 does not have).
                            "schema": {
                                "type": "object",
                                "description": "One message: its `data:` is an `Event`.",
                                "required": ["data"],
                                "properties": {
                                    "id": {"type": "string", "pattern": "^[0-9]+$"},
                                    "event": {"type": "string", "enum": EVENT_TYPES},
                                    "retry": {"type": "integer", "minimum": 0},
                                    "data": {
                                        "type": "string",
                                        "contentMediaType": "application/json",
                                        "contentSchema": {"$ref": "#/components/schemas/Event"},
                                    },
                                },
                            },
                        }
                    },
                },
                "204": {
                    "description": "The goal has ended and nothing is after that id.",
                    "headers": {"Cache-Control": {"schema": {"const": "no-store"}}},
                },
                **_errors("400", "401", "403", "404", "429", "503"),
            },
        },
        "openapi": {
            "summary": "This document",
            "responses": {
                "200": {
                    "description": "The OpenAPI 3.1 document.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        },
    }


def _paths() -> dict[str, Any]:
    """The paths, from the router's own table (`goalkit.asgi.routes.ROUTES`)."""
    operations = _operations()
    paths: dict[str, Any] = {}
    for route in ROUTES:
        item: dict[str, Any] = {}
        if route.params:
            item["parameters"] = [_parameter(param) for param in route.params]
        for operation in route.operations:
            entry: dict[str, Any] = {"operationId": operation.operation_id}
            entry.update(operations[operation.operation_id])
            if operation.params:
                entry["parameters"] = [_parameter(param) for param in operation.params]
            if operation.public:
                entry["security"] = []
            item[operation.method.lower()] = entry
        paths[route.path] = item
    return paths


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "goalkit",
            "version": goalkit.__version__,
            "description": "Durable, multi-step agent goals. Every JSON answer is an envelope: "
            '`{"ok": true, "data": …}` or `{"ok": false, "error": {"code", "message"}}`. '
            "A method a path does not list is a 405 with an `Allow` header.",
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }

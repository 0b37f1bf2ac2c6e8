"""The OpenAPI 3.1 document of the HTTP API, built from data.

The limits in it are the ones `goalkit.models` enforces and the ASGI layer checks, imported
rather than restated, so the document cannot drift from the code; `tests/test_openapi.py`
runs schemathesis over it against the app.
"""

from __future__ import annotations

from typing import Any

import goalkit
from goalkit.models import (
    MAX_DESCRIPTION,
    MAX_IDEMPOTENCY_KEY,
    MAX_LIMIT,
    MAX_MODEL_LENGTH,
    MAX_OWNER_LENGTH,
    MAX_RETRIES,
    MAX_STEPS,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MODES,
    STATUSES,
    TERMINAL_EVENTS,
)

__all__ = ["document"]

MAX_INTEGER = 2**53 - 1
"""The largest offset, event id or token budget accepted: the largest integer JSON clients
(JavaScript) hold exactly, and far inside what storage backends can bind."""
LAST_EVENT_ID_PATTERN = "^[0-9]{1,15}$"  # 15 digits stay below MAX_INTEGER
# Printable ASCII without surrounding spaces (servers strip those from header values).
IDEMPOTENCY_KEY_PATTERN = rf"^[!-~](?:[ -~]{{0,{MAX_IDEMPOTENCY_KEY - 2}}}[!-~])?$"
STEP_STATUSES = ["pending", "running", "completed", "failed", "cancelled"]
PHASES = ["created", "decomposing", "running", "completed", "failed", "cancelled"]
EVENT_TYPES = [
    "goal.created",
    "goal.decomposed",
    "goal.step_started",
    "goal.step_completed",
    "goal.step_failed",
    *sorted(TERMINAL_EVENTS),
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_INT = {"type": "integer"}
_TIME = {"type": ["integer", "null"], "description": "Unix seconds"}
_TEXT = {"pattern": r"\S"}  # not all blank: text is stripped before it is stored


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
    "404": _error("No goal has this id."),
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


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_GOAL_ID = {
    "name": "goal_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
    "description": "The goal's id (`goal-…`).",
}


def _schemas(budgets: bool) -> dict[str, Any]:
    create_properties: dict[str, Any] = {
        "description": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_DESCRIPTION,
            **_TEXT,
            "description": "What the goal should achieve.",
        },
        "model": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_MODEL_LENGTH,
            **_TEXT,
            "description": "Model name; a provider plugin must serve it. Default: the server's.",
        },
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
            "items": {"type": "string", "minLength": 1, "maxLength": MAX_TAG_LENGTH, **_TEXT},
            "description": "Labels; stripped, duplicates dropped.",
        },
    }
    if budgets:
        create_properties["max_tokens"] = {
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": MAX_INTEGER,
            "description": "Optional total token budget.",
        }
    goal_properties: dict[str, Any] = {
        "id": {"type": "string", "pattern": "^goal-"},
        "description": {"type": "string"},
        "model": {"type": "string"},
        "mode": {"type": "string", "enum": list(MODES)},
        "max_steps": _INT,
        "max_retries": _INT,
        "tags": {"type": "array", "items": {"type": "string"}},
        "owner": {"type": "string"},
        "status": {"type": "string", "enum": list(STATUSES)},
        "phase": {"type": "string", "enum": PHASES},
        "workflow_id": {"type": "string", "pattern": "^wf-"},
        "steps_completed": _INT,
        "total_steps": _INT,
        "current_step": {"type": ["integer", "null"]},
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
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
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
            "required": ["total", "limit", "offset"],
            "properties": {"total": _INT, "limit": _INT, "offset": _INT},
        },
        "Event": {
            "type": "object",
            "description": "The `data:` line of each server-sent event.",
            "required": ["id", "type", "goal_id", "workflow_id", "ts", "data"],
            "properties": {
                "id": {"type": "integer", "minimum": 1, "description": "Per-goal number."},
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


def _paths() -> dict[str, Any]:
    by_id = {"goal_id": "$response.body#/data/id"}
    return {
        "/api/v1/goals": {
            "post": {
                "operationId": "createGoal",
                "summary": "Create a goal (owned by the caller) and start it",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": MAX_IDEMPOTENCY_KEY,
                            "pattern": IDEMPOTENCY_KEY_PATTERN,
                        },
                        "description": "Repeating a key (same user) returns the goal it "
                        "created; the same key with another body is a 409.",
                    }
                ],
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
                                "description": "The goal's URL.",
                            }
                        },
                        links={
                            "GetGoal": {"operationId": "getGoal", "parameters": by_id},
                            "CancelGoal": {"operationId": "cancelGoal", "parameters": by_id},
                            "GoalEvents": {"operationId": "goalEvents", "parameters": by_id},
                        },
                    ),
                    **_errors("400", "401", "409", "413", "415", "429"),
                },
            },
            "get": {
                "operationId": "listGoals",
                "summary": "List goals, newest first (non-admins: their own)",
                "parameters": [
                    _query(
                        "status", {"type": "string", "enum": list(STATUSES)}, "Only this status."
                    ),
                    _query(
                        "tag",
                        {"type": "string", "minLength": 1, "maxLength": MAX_TAG_LENGTH},
                        "Only goals with this tag.",
                    ),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
                        "Page size.",
                    ),
                    _query(
                        "offset",
                        {"type": "integer", "minimum": 0, "maximum": MAX_INTEGER, "default": 0},
                        "Goals to skip.",
                    ),
                    _query(
                        "owner",
                        {"type": "string", "minLength": 1, "maxLength": MAX_OWNER_LENGTH},
                        "Admins only: only this user's goals (others: 403 unless their own).",
                    ),
                ],
                "responses": {
                    "200": _json("GoalList", "A page of goals and its `meta`."),
                    **_errors("400", "401", "403"),
                },
            },
        },
        "/api/v1/goals/{goal_id}": {
            "parameters": [_GOAL_ID],
            "get": {
                "operationId": "getGoal",
                "summary": "The goal in full: steps, their status, attempts, results and errors",
                "responses": {
                    "200": _json("GoalResponse", "The goal with its steps."),
                    **_errors("401", "403", "404"),
                },
            },
            "delete": {
                "operationId": "cancelGoal",
                "summary": "Cancel the goal: stops its workflow and any in-flight step",
                "responses": {
                    "200": _json("CancelResponse", "The goal was cancelled."),
                    **_errors("401", "403", "404", "409"),
                },
            },
        },
        "/api/v1/goals/{goal_id}/events": {
            "parameters": [_GOAL_ID],
            "get": {
                "operationId": "goalEvents",
                "summary": "The goal's events as server-sent events: replay, then live",
                "description": "Each event is `id: N`, `event: TYPE`, `data: <Event JSON>`. "
                "The stream starts with a `retry:` line, sends `: keep-alive` comments while "
                "idle and ends after the terminal event. `Last-Event-ID` wins over `after`.",
                "parameters": [
                    _query(
                        "after",
                        {"type": "integer", "minimum": 0, "maximum": MAX_INTEGER, "default": 0},
                        "Replay the events numbered above this.",
                    ),
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": LAST_EVENT_ID_PATTERN},
                        "description": "The last event id seen (sent by EventSource on reconnect).",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The event stream.",
                        "headers": {
                            "Cache-Control": {"schema": {"const": "no-cache"}},
                            "X-Accel-Buffering": {"schema": {"const": "no"}},
                        },
                        "content": {
                            "text/event-stream": {
                                "schema": {
                                    "type": "string",
                                    "description": "Messages whose `data:` is an `Event`.",
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
        },
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.1 document.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }


def document(*, budgets: bool = False) -> dict[str, Any]:
    """The OpenAPI 3.1 document; `budgets` adds the ``max_tokens`` creation field."""
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
            "schemas": _schemas(budgets),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }

"""The OpenAPI document: valid OpenAPI 3.1, complete, and true of the app (schemathesis)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import anyio.from_thread
import httpx
import jsonschema_rs
import pytest
import schemathesis
from asgi_helpers import ROOT, AnyModel, client, make_manager
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import goalkit.asgi
from goalkit.asgi.routes import ROUTES
from goalkit.models import (
    BLANK,
    MAX_DESCRIPTION,
    MAX_MODEL_LENGTH,
    MAX_RETRIES,
    MAX_STEPS,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    encode_cursor,
    text_pattern,
)

# Served alone: schemathesis runs the app's lifespan, which opens the manager.
app = goalkit.asgi.create_app(make_manager(AnyModel()))
schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)
DOCUMENT: dict[str, Any] = goalkit.asgi.openapi_document()


@schema.auth()
class RootToken:
    """The admin's token on every generated request, as schemathesis's own auth.

    Registered rather than passed as ``headers=`` to each call: schemathesis then knows the
    header is the caller's, and does not count a case whose only fault was a missing or
    broken Authorization (replaced by this one on the way out) as invalid data accepted.
    """

    def get(self, case: schemathesis.Case, ctx: Any) -> str:
        return ROOT["Authorization"]

    def set(self, case: schemathesis.Case, data: str, ctx: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": data}


# The document gives a cursor a format, not a pattern (a cursor holds a check of itself):
# generators draw real cursors, for any position, as a client would get them.
schemathesis.openapi.format("goalkit-cursor", st.integers(1, 2**53 - 1).map(encode_cursor))


@schema.hook
def filter_case(ctx: Any, case: schemathesis.Case) -> bool:
    """No generated listing sends both `cursor` and `offset`: OpenAPI cannot state that two
    query parameters exclude each other, so the document says it in words (the 400 is
    tested in test_asgi.py, `TestListCursor`)."""
    return not (case.query and "cursor" in case.query and "offset" in case.query)


OPERATIONS = {
    ("post", "/api/v1/goals"),
    ("get", "/api/v1/goals"),
    ("get", "/api/v1/goals/{goal_id}"),
    ("delete", "/api/v1/goals/{goal_id}"),
    ("get", "/api/v1/goals/{goal_id}/events"),
    ("get", "/api/v1/openapi.json"),
}


class TestDocument:
    """The document describes every operation, parameter, limit and error."""

    def test_is_openapi_31(self) -> None:
        assert DOCUMENT["openapi"] == "3.1.0"
        schema.validate()  # against the OpenAPI 3.1 meta-schema
        assert {result.ok().label for result in schema.get_all_operations()} == {
            f"{method.upper()} {path}" for method, path in OPERATIONS
        } - {"GET /api/v1/openapi.json"}  # schemathesis leaves out the document's own path

    def test_every_operation(self) -> None:
        found = {
            (method, path)
            for path, item in DOCUMENT["paths"].items()
            for method in item
            if method != "parameters"
        }
        assert found == OPERATIONS

    def test_errors_per_operation(self) -> None:
        paths = DOCUMENT["paths"]
        expected = {
            ("post", "/api/v1/goals"): {
                "201",
                "400",
                "401",
                "403",
                "408",
                "409",
                "413",
                "415",
                "429",
                "500",
            },
            ("get", "/api/v1/goals"): {"200", "400", "401", "403", "500"},
            ("get", "/api/v1/goals/{goal_id}"): {"200", "401", "403", "404", "500"},
            ("delete", "/api/v1/goals/{goal_id}"): {"200", "401", "403", "404", "409", "500"},
            ("get", "/api/v1/goals/{goal_id}/events"): {
                "200",
                "204",
                "400",
                "401",
                "403",
                "404",
                "429",
                "500",
                "503",
            },
        }
        for (method, path), statuses in expected.items():
            assert set(paths[path][method]["responses"]) == statuses
        unauthorized = paths["/api/v1/goals"]["get"]["responses"]["401"]
        assert unauthorized["headers"]["WWW-Authenticate"]["required"] is True

    def test_limits_match_the_models(self) -> None:
        create = DOCUMENT["components"]["schemas"]["GoalCreate"]
        assert create["additionalProperties"] is False
        assert create["required"] == ["description"]
        fields = create["properties"]
        # Lengths count after stripping, which only a pattern can state (no maxLength).
        assert fields["description"]["pattern"] == text_pattern(MAX_DESCRIPTION)
        assert fields["model"]["pattern"] == text_pattern(MAX_MODEL_LENGTH)
        assert "maxLength" not in fields["description"]
        assert (fields["max_steps"]["minimum"], fields["max_steps"]["maximum"]) == (1, MAX_STEPS)
        assert fields["max_retries"]["maximum"] == MAX_RETRIES
        assert fields["tags"]["maxItems"] == MAX_TAGS
        assert fields["tags"]["items"]["pattern"] == text_pattern(MAX_TAG_LENGTH)
        assert fields["mode"]["enum"] == ["plan", "direct"]

    def test_security_and_links(self) -> None:
        assert DOCUMENT["components"]["securitySchemes"]["bearer"] == {
            "type": "http",
            "scheme": "bearer",
        }
        assert DOCUMENT["paths"]["/api/v1/openapi.json"]["get"]["security"] == []
        links = DOCUMENT["paths"]["/api/v1/goals"]["post"]["responses"]["201"]["links"]
        assert {link["operationId"] for link in links.values()} == {
            "getGoal",
            "cancelGoal",
            "goalEvents",
        }

    def test_paths_and_parameters_are_the_routers(self) -> None:
        """Every path, method and parameter of the document is one of the router's table."""
        for route in ROUTES:
            item = DOCUMENT["paths"][route.path]
            assert [p["name"] for p in item.get("parameters", [])] == [p.name for p in route.params]
            for operation in route.operations:
                entry = item[operation.method.lower()]
                assert entry["operationId"] == operation.operation_id
                assert [(p["name"], p["in"]) for p in entry.get("parameters", [])] == [
                    (p.name, p.where) for p in operation.params
                ]
        assert list(DOCUMENT["paths"]) == [route.path for route in ROUTES]

    def test_every_ref_resolves(self) -> None:
        text = str(DOCUMENT)
        for name in re.findall(r"#/components/schemas/(\w+)", text):
            assert name in DOCUMENT["components"]["schemas"]


@schema.parametrize()
@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms(case: schemathesis.Case) -> None:
    """Generated requests, valid and invalid, pass schemathesis's default checks."""
    case.call_and_validate()


@pytest.fixture(scope="module", autouse=True)
def _stop_lifespans() -> Any:
    yield
    from schemathesis.python.asgi import shutdown_lifespans

    shutdown_lifespans()


# -- the document and the server agree on every body ----------------------------------------

CREATE_SCHEMA = DOCUMENT["components"]["schemas"]["GoalCreate"]
# What a JSON Schema validator (ECMA regexes, as schemathesis uses) says of a body.
IS_VALID = jsonschema_rs.validator_for(CREATE_SCHEMA).is_valid


def _texts(limit: int) -> st.SearchStrategy[str]:
    """Text around every edge: blank characters of either language, and lengths at `limit`."""
    blank = st.text(alphabet=BLANK, max_size=3)
    short = st.text(alphabet=BLANK + "aé\u00ad\u200b", max_size=6)
    edge = st.builds(
        lambda pad, n, end: pad + "a" * n + end,
        blank,
        st.sampled_from([limit - 1, limit, limit + 1]),
        blank,
    )
    return st.one_of(short, blank, edge)


_bodies = st.fixed_dictionaries(
    {"description": _texts(MAX_DESCRIPTION)},
    optional={
        "model": _texts(MAX_MODEL_LENGTH),
        "tags": st.lists(_texts(MAX_TAG_LENGTH), max_size=MAX_TAGS + 2),
        "max_steps": st.sampled_from([0, 1, 5.0, 100, 101, True, None, "5"]),
        "max_retries": st.sampled_from([0, 10, 11, 2.5, None]),
        "mode": st.sampled_from(["plan", "direct", "PLAN", None]),
        "max_tokens": st.sampled_from([None, 5]),
    },
)


@pytest.fixture(scope="module")
def portal_http() -> Iterator[tuple[anyio.from_thread.BlockingPortal, httpx.AsyncClient]]:
    """An app on its own manager, called from a hypothesis test through a portal."""
    manager = make_manager(AnyModel())
    http = client(goalkit.asgi.create_app(manager))
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(manager),
        portal.wrap_async_context_manager(http),
    ):
        yield portal, http


class TestDocumentAgreesWithServer:
    """A body is accepted exactly when the document's schema (read as JSON Schema) says so."""

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=_bodies)
    @example(body={"description": "\x85"})  # blank in Python, not in ECMA regexes
    @example(body={"description": "\x1c\x1d"})
    @example(body={"description": "\ufeff"})  # blank in ECMA regexes, not in Python
    @example(body={"description": "ok", "tags": ["\ufeff"]})
    @example(body={"description": " " + "a" * MAX_DESCRIPTION + " "})
    @example(body={"description": "ok", "tags": ["t"] * (MAX_TAGS + 1)})
    @example(body={"description": "ok", "max_tokens": None})
    def test_accepted_exactly_when_valid(
        self,
        portal_http: tuple[anyio.from_thread.BlockingPortal, httpx.AsyncClient],
        body: dict[str, Any],
    ) -> None:
        """201 for a body the schema calls valid, 400 for one it calls invalid."""
        portal, http = portal_http
        content = json.dumps(body).encode()
        headers = {**ROOT, "Content-Type": "application/json"}
        response = portal.call(lambda: http.post("/api/v1/goals", content=content, headers=headers))
        expected = 201 if IS_VALID(body) else 400
        assert response.status_code == expected, response.text


# -- stateful: sequences that follow the document's links ----------------------------------

# Operations that found their goal in the stateful run (2xx, or 409 for a goal that already
# ended): only a link gives them a real goal id. Cancel mostly answers 409, as AnyModel's
# goals end at once.
REACHED: set[str] = set()


class GoalLinks(schema.as_state_machine()):  # type: ignore[misc]
    """Create a goal, then follow its 201's links: get it, cancel it, stream its events.

    AnyModel finishes a goal in one step, so its event stream ends instead of hanging.
    """

    def after_call(self, response: schemathesis.Response, case: schemathesis.Case) -> None:
        if response.status_code < 300 or response.status_code == 409:
            REACHED.add(case.operation.label)


def test_links_conform() -> None:
    """Sequences built from createGoal's links pass schemathesis's default checks."""
    REACHED.clear()
    GoalLinks.run(
        settings=settings(
            max_examples=40,
            stateful_step_count=4,
            deadline=None,
            # The same sequences every run: the coverage check below must not depend on luck.
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
    )
    assert {
        "GET /api/v1/goals/{goal_id}",
        "DELETE /api/v1/goals/{goal_id}",
        "GET /api/v1/goals/{goal_id}/events",
    } <= REACHED

"""The OpenAPI document: valid OpenAPI 3.1, complete, and true of the app (schemathesis)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import schemathesis
from asgi_helpers import ROOT, AnyModel, make_manager
from hypothesis import HealthCheck, settings

import goalkit.asgi
from goalkit.models import MAX_DESCRIPTION, MAX_RETRIES, MAX_STEPS, MAX_TAG_LENGTH, MAX_TAGS

# Served alone: schemathesis runs the app's lifespan, which opens the manager.
app = goalkit.asgi.create_app(make_manager(AnyModel()))
schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)
DOCUMENT: dict[str, Any] = goalkit.asgi.openapi_document()

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
            ("post", "/api/v1/goals"): {"201", "400", "401", "409", "413", "415", "429", "500"},
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
        assert fields["description"]["maxLength"] == MAX_DESCRIPTION
        assert fields["description"]["minLength"] == 1
        assert (fields["max_steps"]["minimum"], fields["max_steps"]["maximum"]) == (1, MAX_STEPS)
        assert fields["max_retries"]["maximum"] == MAX_RETRIES
        assert fields["tags"]["maxItems"] == MAX_TAGS
        assert fields["tags"]["items"]["maxLength"] == MAX_TAG_LENGTH
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
    case.call_and_validate(headers={"Authorization": f"Bearer {ROOT['Authorization'][7:]}"})


@pytest.fixture(scope="module", autouse=True)
def _stop_lifespans() -> Any:
    yield
    from schemathesis.python.asgi import shutdown_lifespans

    shutdown_lifespans()

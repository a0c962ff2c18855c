"""Schemathesis against the served /openapi.json: no input makes a 5xx, and every answer
matches the schema (status codes, content types, bodies). A bounded number of examples per
operation keeps it inside the CI budget.

schemathesis's own pytest plugin (``from_fixture``) does not run on this pytest, so each
operation is a parametrized test that draws its cases with hypothesis from the served schema.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine

from app.api.app import create_app
from app.settings import Settings
from tests.api.conftest import key_for
from tests.serving import Server

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 15
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
SPEC = create_app(Settings()).openapi()
OPERATIONS = [(m.upper(), path) for path, ops in SPEC["paths"].items() for m in sorted(ops)]


@pytest.fixture(scope="module")
def served(server: Server) -> Any:
    schema = schemathesis.openapi.from_url(server.base + "/openapi.json")
    assert schema.raw_schema["paths"].keys() == SPEC["paths"].keys()
    return schema


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_input_makes_a_5xx_and_answers_match_the_schema(
    served: Any, server: Server, db: Engine, acme: str, method: str, path: str
) -> None:
    headers = {"Authorization": f"Bearer {key_for(db, None)}"}
    operation = served[path][method]

    @given(case=operation.as_strategy(), own_org=st.booleans())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: Any, own_org: bool) -> None:
        if own_org and "slug" in (case.path_parameters or {}):
            case.path_parameters["slug"] = acme  # past the 404, into the route's own checks
        case.call_and_validate(base_url=server.base, headers=headers, checks=CHECKS)

    check()

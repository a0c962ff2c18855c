"""Keys: every route refuses a missing, wrong or revoked key, and another organization's key
gets 404 for this organization's resources. Parametrized over the app's route table, so a new
route cannot skip it."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, insert, text

from app.api.app import create_app
from app.db.models import ApiRun
from app.settings import Settings
from tests.api.conftest import key_for
from tests.api.support import Api, problem
from tests.serving import ROOT, SETTINGS_VARS, Server

TASK_ID = "3b0c7a7e-0000-4000-8000-000000000001"
VALUES = {
    "slug": "acme",
    "lead": "3",
    "subscription_id": "s0",
    "customer_id": "c0",
    "message_id": "1",
    "phone": "+12025550100",
    "task_id": TASK_ID,
    "endpoint_id": "1",
}
#: Routes outside /v1 and why they need no key.
PUBLIC = {
    ("GET", "/healthz"): "liveness",
    ("GET", "/readyz"): "readiness",
    ("GET", "/metrics"): "Prometheus scrapes it without a key (README: Monitoring)",
    ("POST", "/twilio/status"): "Twilio's signature instead",
    ("POST", "/twilio/inbound"): "Twilio's signature instead",
}
ADMIN_ONLY = {("POST", "/v1/organizations"), ("GET", "/v1/workers")}
#: Routes not about one organization: another organization's key gets its own (empty) view.
OWN_VIEW = {("GET", "/v1/organizations"), ("GET", "/v1/tasks")}


def _routes() -> list[tuple[str, str]]:
    """Every operation the app serves, as its OpenAPI document lists them."""
    spec = create_app(Settings()).openapi()
    return [(m.upper(), path) for path, ops in spec["paths"].items() for m in sorted(ops)]


ROUTES = _routes()
V1 = [r for r in ROUTES if r[1].startswith("/v1/")]


def test_every_route_is_under_v1_or_public_for_a_reason() -> None:
    assert {r for r in ROUTES if r not in V1} == set(PUBLIC)


@pytest.fixture
def acme_task(db: Engine, acme: str) -> str:
    with db.begin() as conn:
        org_id = conn.execute(text("SELECT id FROM organizations WHERE slug='acme'")).scalar_one()
        conn.execute(
            insert(ApiRun).values(task_id=TASK_ID, org_id=org_id, created_at=datetime.now(UTC))
        )
    return TASK_ID


@pytest.mark.parametrize(("method", "path"), V1, ids=[f"{m} {p}" for m, p in V1])
def test_keys_are_refused(
    server: Server, db: Engine, acme: str, acme_task: str, method: str, path: str
) -> None:
    url = path.format(**VALUES)
    body = {"organization": "acme"} if (method, path) == ("POST", "/v1/runs") else None
    for key in (None, "rk_wrong", key_for(db, "acme", revoked=True)):
        response = Api(server.base, key).request(method, url, json=body)
        assert "Authorization" in problem(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"

    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO organizations (slug, name, timezone, send_time, window_start,"
                " window_end, lead_days, country, active, created_at) VALUES ('other', 'Other',"
                " 'UTC', '09:00', '08:00', '21:00', '3', 'US', true, now())"
            )
        )
    other = Api(server.base, key_for(db, "other"))
    response = other.request(method, url, json=body)
    if (method, path) in ADMIN_ONLY:
        assert problem(response, 403)
    elif (method, path) in OWN_VIEW:
        assert response.status_code == 200
        assert "acme" not in response.text and TASK_ID not in response.text
    else:
        assert problem(response, 404)


def _reminders(*args: str, pg_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARS}
    env.update(DATABASE_URL=pg_url, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_api_key_commands_show_the_key_once_and_store_only_its_hash(
    server: Server, db: Engine, acme: str, pg_url: str
) -> None:
    made = _reminders("api-key", "create", "acme", "--name", "billing", pg_url=pg_url)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("rk_") and len(key) > 40 and key not in made.stderr
    with db.connect() as conn:
        dumped = str(conn.execute(text("SELECT * FROM api_keys")).all())
    assert key not in dumped and key[10:] not in dumped

    listed = _reminders("api-key", "list", "--json", pg_url=pg_url)
    assert key not in listed.stdout and '"billing"' in listed.stdout
    api = Api(server.base, key)
    assert api.ok("GET", "/v1/organizations/acme")["slug"] == "acme"

    key_id = _reminders("api-key", "list", pg_url=pg_url).stdout.split()[0]
    assert _reminders("api-key", "revoke", key_id, pg_url=pg_url).returncode == 0
    assert problem(api.get("/v1/organizations/acme"), 401)
    assert key not in server.text()

    for args, words in [
        (("api-key", "create"), "SLUG or --admin"),
        (("api-key", "create", "acme", "--admin"), "SLUG or --admin"),
        (("api-key", "create", "nope"), "no organization"),
        (("api-key", "revoke", "999"), "no API key 999"),
    ]:
        result = _reminders(*args, pg_url=pg_url)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: ")
        assert words in lines[0]

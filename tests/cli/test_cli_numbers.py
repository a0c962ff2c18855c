"""`reminders status` counts the numbers marked undeliverable; `reminders number clear` lifts
a mark."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cli_support import Cli
from sqlalchemy import Engine

from app.db import undeliverable
from tests.factories import make_org


@pytest.fixture
def pg_db(pg_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    monkeypatch.setenv("DATABASE_URL", pg_engine.url.render_as_string(hide_password=False))
    return pg_engine


def test_status_shows_the_marks_and_clear_lifts_one(pg_db: Engine, cli: Cli) -> None:
    org = make_org(pg_db, now=datetime.now(UTC))
    with pg_db.begin() as conn:
        for phone in ("+12025550143", "+12025550144"):
            undeliverable.mark(
                conn, org_id=org, phone_e164=phone, code="30006", now=datetime.now(UTC)
            )
    assert "2 numbers undeliverable" in cli("status").out

    cleared = cli("number", "clear", "(202) 555-0143", "--org", "acme")
    assert (cleared.code, cleared.out.strip()) == (0, "+12025550143: texted again for acme")
    assert "1 number undeliverable" in cli("status").out
    again = cli("number", "clear", "+12025550143", "--org", "acme").out
    assert "was not marked" in again
    assert cli("number", "clear", "12", "--org", "acme").error.startswith("error: ")

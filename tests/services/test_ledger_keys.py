"""The ledger's keys (migration 0009): a row belongs to its subscription and to that
subscription's organization, on SQLite and PostgreSQL, and a ledger already holding rows
migrates to that key and back without losing one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from alembic import command
from sqlalchemy import Engine, delete, insert, inspect, select, update
from sqlalchemy.exc import IntegrityError

from app.db.migrate import alembic_config, upgrade
from app.db.models import Organization, Reminder, Subscription
from app.db.session import get_engine
from tests import factories
from tests.conftest import PG_ADMIN, _pg_url
from tests.ledger_rows import make_org, make_row

BEFORE = "0008_events"


def _row_values(engine: Engine, row_id: int) -> dict[str, object]:
    with engine.connect() as conn:
        row = conn.execute(select(Reminder).where(Reminder.id == row_id)).one()
    return dict(row._mapping)


def _copy_for(engine: Engine, row_id: int, **changes: object) -> None:
    """A second row like ``row_id`` (another lead day), with ``changes``."""
    values = _row_values(engine, row_id)
    values.pop("id")
    values.update(lead_days=1, **changes)
    with engine.begin() as conn:
        conn.execute(insert(Reminder).values(**values))


def test_a_row_whose_organization_is_not_its_subscriptions_is_refused(engine: Engine) -> None:
    ours, theirs = make_org(engine), make_org(engine)
    row = make_row(engine, ours)
    with pytest.raises(IntegrityError):
        _copy_for(engine, row, org_id=theirs)
    with pytest.raises(IntegrityError):
        _copy_for(engine, row, subscription_id=row + 1000)
    _copy_for(engine, row)  # the same row with its own organization goes in
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(update(Reminder).where(Reminder.id == row).values(org_id=theirs))


def test_deleting_an_organization_or_a_subscription_deletes_its_rows(engine: Engine) -> None:
    gone, kept = make_org(engine), make_org(engine)
    make_row(engine, gone)
    other = make_row(engine, kept)
    lost = make_row(engine, kept)
    with engine.begin() as conn:
        conn.execute(delete(Organization).where(Organization.id == gone))
        sub = conn.execute(select(Reminder.subscription_id).where(Reminder.id == lost)).scalar()
        conn.execute(delete(Subscription).where(Subscription.id == sub))
    assert [r["id"] for r in factories.ledger_rows(engine)] == [other]


@pytest.fixture(params=["sqlite", "postgresql"])
def unmigrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of its own (the shared ones are migrated already)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    name = f"reminders_migration_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield _pg_url(name)
        finally:
            get_engine(_pg_url(name)).dispose()
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _ledger_keys(engine: Engine) -> list[tuple[tuple[str, ...], str]]:
    return sorted(
        (tuple(fk["constrained_columns"]), fk["referred_table"])
        for fk in inspect(engine).get_foreign_keys("reminders")
    )


def test_a_ledger_with_rows_migrates_to_the_composite_key_and_back(unmigrated_url: str) -> None:
    upgrade(unmigrated_url, BEFORE)
    engine = get_engine(unmigrated_url)
    org = make_org(engine)
    today = datetime.now(UTC).date()
    rows = [make_row(engine, org, status=s, today=today) for s in ("pending", "sent", "skipped")]
    before = factories.ledger_rows(engine)

    upgrade(unmigrated_url)
    assert factories.ledger_rows(engine) == before
    assert _ledger_keys(engine) == [
        (("customer_id",), "customers"),
        (("subscription_id", "org_id"), "subscriptions"),
    ]
    with pytest.raises(IntegrityError):
        _copy_for(engine, rows[0], org_id=make_org(engine))

    command.downgrade(alembic_config(unmigrated_url), BEFORE)
    assert factories.ledger_rows(engine) == before
    assert _ledger_keys(engine) == [
        (("customer_id",), "customers"),
        (("org_id",), "organizations"),
        (("subscription_id",), "subscriptions"),
    ]

"""A subscription the host moves to another customer between planning and sending: the text
goes to its new owner, by name and number, never to the customer it was planned for (SQLite
and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, select

from app.db import ledger
from app.db.models import Customer, Reminder
from app.domain.planning import utcnow
from app.services.engine import load_orgs, plan_day
from app.services.importer import upsert_items
from tests import factories

ALICE, BOB = "+14155550101", "+14155550202"


def _owned_by(customer: str, phone: str, name: str) -> dict[str, str | None]:
    expires = (utcnow().date() + timedelta(days=3)).isoformat()
    return {
        "customer_id": customer,
        "name": name,
        "phone": phone,
        "subscription_id": "S1",
        "plan": "Fiber",
        "expires_on": expires,
    }


def _send_due(engine: Engine) -> list[tuple[str, str, str | None]]:
    provider = factories.RecordingProvider()
    sender = factories.make_sender(engine, provider)
    with engine.connect() as conn:
        due = ledger.due_ids(conn, now=utcnow())
    try:
        sender.send_ids(due, ignore_window=True)
    finally:
        sender.close()
    return provider.sent


def _owner_of_text(engine: Engine) -> str:
    with engine.connect() as conn:
        return conn.execute(
            select(Customer.external_id).join(Reminder, Reminder.customer_id == Customer.id)
        ).scalar_one()


def test_a_text_planned_for_one_customer_goes_to_the_subscriptions_new_owner(
    engine: Engine,
) -> None:
    factories.make_org(engine, "acme", now=utcnow(), send_window="00:00-00:00")
    with engine.begin() as conn:
        upsert_items(conn, "acme", [_owned_by("A", ALICE, "Alice")])
    with engine.begin() as conn:
        plan_day(conn, now=utcnow(), orgs=load_orgs(conn), render=False)
    with engine.begin() as conn:  # the host moves S1 to Bob before the text leaves
        upsert_items(conn, "acme", [_owned_by("B", BOB, "Bob")])
    [(to, body, _)] = _send_due(engine)
    assert to == BOB and body.startswith("Hi Bob,")
    assert _owner_of_text(engine) == "B"


def test_a_text_already_sent_stays_with_the_customer_it_went_to(engine: Engine) -> None:
    factories.make_org(engine, "acme", now=utcnow(), send_window="00:00-00:00")
    with engine.begin() as conn:
        upsert_items(conn, "acme", [_owned_by("A", ALICE, "Alice")])
    with engine.begin() as conn:
        plan_day(conn, now=utcnow(), orgs=load_orgs(conn), render=False)
    [(to, _, _)] = _send_due(engine)
    assert to == ALICE
    with engine.begin() as conn:
        upsert_items(conn, "acme", [_owned_by("B", BOB, "Bob")])
        plan_day(conn, now=utcnow(), orgs=load_orgs(conn), render=False)
    assert _send_due(engine) == []  # the same reminder is not sent again to the new owner
    assert _owner_of_text(engine) == "A"

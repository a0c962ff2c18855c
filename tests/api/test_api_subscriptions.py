"""Customers and subscriptions over HTTP: the CSV import's checks and writes, item by item."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select, text

from app.db.models import Subscription
from app.services.runner import run_day
from tests import factories
from tests.api.support import Api, item, problem
from tests.ledger_rows import get_row, make_row

SUBS = "/v1/organizations/acme/subscriptions"


def count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_bulk_upsert_stores_and_updates_by_external_ids(api: Api, db: Engine) -> None:
    items = [item(n, amount=9.5, currency="usd") for n in range(3)]
    result = api.ok("POST", SUBS, json={"items": items})
    assert (result["received"], result["stored"], result["customers"]) == (3, 3, 3)
    assert result["errors"] == []
    again = api.ok("POST", SUBS, json={"items": [item(1, expires_on="2031-06-30")]})
    assert again["stored"] == 1 and count(db, "subscriptions") == 3
    one = api.ok("GET", f"{SUBS}/s1")
    assert (one["expires_on"], one["customer_id"], one["status"]) == ("2031-06-30", "c1", "active")
    assert api.ok("GET", f"{SUBS}/s0")["amount"] == "9.50"
    assert (
        api.ok("GET", "/v1/organizations/acme/customers/c2")["subscriptions"][0]["subscription_id"]
        == "s2"
    )
    assert "no subscription" in problem(api.get(f"{SUBS}/nope"), 404)


def test_one_bad_item_stores_nothing_and_every_bad_item_is_listed(api: Api, db: Engine) -> None:
    items = [
        item(0),
        item(1, expires_on="2030-02-30"),
        item(2, name=" "),
        item(3, status="paused"),
        item(0),  # the same subscription twice
    ]
    response = api.post(SUBS, json={"items": items})
    detail = problem(response, 422)
    assert detail.startswith("item 1: expires_on") and "nothing was stored" in detail
    errors = response.json()["errors"]
    assert [e["index"] for e in errors] == [1, 2, 3, 4]
    assert "status 'paused'" in errors[2]["reason"] and "already on item 0" in errors[3]["reason"]
    assert count(db, "subscriptions") == 0 and count(db, "customers") == 0


def test_partial_stores_the_good_items_and_lists_the_bad(api: Api, db: Engine) -> None:
    items = [item(0), item(1, expires_on="soon"), item(2)]
    result = api.ok("POST", SUBS, params={"partial": "true"}, json={"items": items})
    assert result["stored"] == 2 and [e["index"] for e in result["errors"]] == [1]
    assert count(db, "subscriptions") == 2


def test_a_badly_shaped_item_names_its_index_and_field(api: Api, db: Engine) -> None:
    response = api.post(SUBS, json={"items": [item(0), {"customer_id": "c1"}]})
    detail = problem(response, 422)
    assert detail.startswith("items.1.")
    assert {e["index"] for e in response.json()["errors"]} == {1}
    assert count(db, "subscriptions") == 0


def test_more_than_10000_items_are_refused(api: Api, db: Engine) -> None:
    items = [item(n) for n in range(10_001)]
    assert "items" in problem(api.post(SUBS, json={"items": items}), 422)
    assert count(db, "subscriptions") == 0


def test_10000_items_are_stored_in_one_request(api: Api, db: Engine) -> None:
    items = [item(n) for n in range(10_000)]
    assert api.ok("POST", SUBS, json={"items": items})["stored"] == 10_000
    page = api.ok("GET", SUBS, params={"limit": 1000})
    assert len(page["items"]) == 1000 and page["next_cursor"]


def test_update_one_renews_and_cancels_with_the_imports_checks(api: Api) -> None:
    api.ok("POST", SUBS, json={"items": [item(0)]})
    renewed = api.ok("PATCH", f"{SUBS}/s0", json={"expires_on": "2031-01-31"})
    assert renewed["expires_on"] == "2031-01-31" and renewed["name"] == "Customer 0"
    assert api.ok("PATCH", f"{SUBS}/s0", json={"status": "cancelled"})["status"] == "cancelled"
    detail = problem(api.patch(f"{SUBS}/s0", json={"expires_on": "tomorrow"}), 422)
    assert detail.startswith("subscription 0: expires_on 'tomorrow'")
    assert api.ok("GET", f"{SUBS}/s0")["expires_on"] == "2031-01-31"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"expires_on": "2099-01-01"}, "renewed"),
        ({"status": "cancelled"}, "cancelled"),
        ({"plan": "Fiber 2"}, None),  # the control: nothing that stops a text, so it goes
    ],
)
def test_a_change_between_planning_and_sending_is_effective_for_that_send(
    api: Api, db: Engine, change: dict[str, str], reason: str | None
) -> None:
    """The row was planned (pending) before the renewal; the send re-checks and skips it."""
    with db.connect() as conn:
        org_id = conn.execute(text("SELECT id FROM organizations WHERE slug='acme'")).scalar_one()
    rid = make_row(db, org_id, status="pending", next_attempt_at=datetime.now(UTC))
    with db.connect() as conn:
        sub_ext = conn.execute(
            select(Subscription.external_id).where(
                Subscription.id == get_row(db, rid).subscription_id
            )
        ).scalar_one()

    api.ok("PATCH", f"{SUBS}/{sub_ext}", json=change)

    provider = factories.RecordingProvider()
    sender = factories.make_sender(db, provider)
    try:
        run_day(db, sender, slugs=["acme"], ignore_window=True)
    finally:
        sender.close()
    row = get_row(db, rid)
    if reason is None:
        assert row.status == "sent" and len(provider.sent) == 1
        return
    assert provider.sent == []
    assert row.status == "skipped" and reason in (row.reason or ""), (row.status, row.reason)
    listed = api.ok("GET", "/v1/organizations/acme/messages", params={"status": "skipped"})
    assert [m["id"] for m in listed["items"]] == [rid]


def test_update_a_customer_through_the_imports_checks(api: Api) -> None:
    api.ok("POST", SUBS, json={"items": [item(0), item(1, customer_id="c0")]})
    customers = "/v1/organizations/acme/customers"
    changed = api.ok("PATCH", f"{customers}/c0", json={"name": "Ada L.", "phone": "(415) 555-2671"})
    assert (changed["name"], changed["phone_e164"]) == ("Ada L.", "+14155552671")
    assert len(changed["subscriptions"]) == 2
    assert "name is empty" in problem(api.patch(f"{customers}/c0", json={"name": " "}), 422)
    bad_phone = api.ok("PATCH", f"{customers}/c0", json={"phone": "12"})
    assert bad_phone["phone_e164"] is None  # stored, and it gets no text (as on import)
    assert problem(api.patch(f"{customers}/nobody", json={"name": "X"}), 404)

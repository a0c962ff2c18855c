"""Reading what the service did: messages, counts per status, opt-outs; and error answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

from tests.api.support import Api, item, problem
from tests.ledger_rows import make_row

MESSAGES = "/v1/organizations/acme/messages"


def _org_id(db: Engine) -> int:
    with db.connect() as conn:
        return int(
            conn.execute(text("SELECT id FROM organizations WHERE slug='acme'")).scalar_one()
        )


def test_messages_filter_and_read_one(api: Api, db: Engine) -> None:
    org = _org_id(db)
    today = datetime.now(UTC).date()
    sent = make_row(
        db, org, status="sent", provider_message_id="SM" + "1" * 32, delivery_status="delivered"
    )
    failed = make_row(db, org, status="failed", error_code="21211", phone="+14155552672")
    old = make_row(db, org, status="sent", today=today - timedelta(days=1), phone="+14155552673")

    by_status = api.ok("GET", MESSAGES, params={"status": "failed"})["items"]
    assert [m["id"] for m in by_status] == [failed]
    by_date = api.ok("GET", MESSAGES, params={"date": str(today - timedelta(days=1))})["items"]
    assert [m["id"] for m in by_date] == [old]
    customer = by_status[0]["customer_id"]
    by_customer = api.ok("GET", MESSAGES, params={"customer_id": customer})["items"]
    assert [m["id"] for m in by_customer] == [failed]
    sub = by_status[0]["subscription_id"]
    assert [m["id"] for m in api.ok("GET", MESSAGES, params={"subscription_id": sub})["items"]] == [
        failed
    ]

    one = api.ok("GET", f"{MESSAGES}/{sent}")
    assert one["body"] and one["status"] == "sent" and one["attempts"] == 1
    assert one["provider_message_id"] == "SM" + "1" * 32 and one["delivery_status"] == "delivered"
    assert api.ok("GET", f"{MESSAGES}/{failed}")["error_code"] == "21211"
    assert problem(api.get(f"{MESSAGES}/999999"), 404)
    assert "status" in problem(api.get(MESSAGES, params={"status": "lost"}), 422)
    assert "date" in problem(api.get(MESSAGES, params={"date": "today"}), 422)

    first = api.ok("GET", MESSAGES, params={"limit": 2})
    rest = api.ok("GET", MESSAGES, params={"limit": 2, "cursor": first["next_cursor"]})
    assert [m["id"] for m in first["items"] + rest["items"]] == [sent, failed, old]
    assert rest["next_cursor"] is None

    counts = api.ok("GET", "/v1/organizations/acme/status", params={"date": str(today)})
    assert counts["counts"]["sent"] == 1 and counts["counts"]["failed"] == 1
    assert counts["counts"]["pending"] == 0


def test_opt_outs_add_list_remove(api: Api) -> None:
    added = api.ok("POST", "/v1/organizations/acme/opt-outs", json={"phone": "(202) 555-0100"})
    assert added == {"phone_e164": "+12025550100", "opted_out": True, "changed": True}
    listed = api.ok("GET", "/v1/organizations/acme/opt-outs")["items"]
    assert [(o["phone_e164"], o["source"]) for o in listed] == [("+12025550100", "api")]
    removed = api.ok("DELETE", "/v1/organizations/acme/opt-outs/+12025550100")
    assert removed["changed"] is True
    assert api.ok("GET", "/v1/organizations/acme/opt-outs")["items"] == []
    bad = api.post("/v1/organizations/acme/opt-outs", json={"phone": "not a phone"})
    assert problem(bad, 422)


def test_error_answers_are_problem_documents(api: Api) -> None:
    subs = "/v1/organizations/acme/subscriptions"
    assert problem(api.get("/v1/nothing-here"), 404)
    assert problem(
        api.post(subs, data=b"{not json", headers={"Content-Type": "application/json"}), 422
    )
    assert problem(api.post(subs, json=[1, 2]), 422)
    assert problem(api.delete("/v1/organizations/acme"), 405)
    huge = {"items": [item(n, name="x" * 900) for n in range(10_000)]}  # ~10 MB
    assert "larger than" in problem(api.post(subs, json=huge), 413)
    assert api.ok("GET", subs)["items"] == []

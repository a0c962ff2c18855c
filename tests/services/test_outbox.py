"""Outbound events from the real flows (planning, the send path against the Twilio double,
status callbacks, opt-outs, a finished day) to a real HTTP receiver that verifies every
signature with an independent Standard Webhooks library (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select

from app.db import ledger
from app.db.models import DailyRun, Event, EventDelivery, Reminder
from app.domain.planning import utcnow
from app.errors import ValidationError
from app.providers.twilio import TwilioProvider
from app.services import dispatch, orgs
from app.services import events as event_service
from app.services.engine import load_orgs, plan_day
from app.services.event_delivery import Deliverer, deliver_due
from app.services.sender import Sender
from app.settings import Settings
from app.webhook import receipts
from tests import factories
from tests.event_receiver import Receiver, receiver
from tests.twilio_fake import FakeTwilio

SETTINGS = Settings(events_allow_private=True, events_timeout_seconds=5.0)


@pytest.fixture
def hook() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


def _endpoint(engine: Engine, url: str, slug: str = "acme", types: Any = None) -> str:
    with engine.begin() as conn:
        made = event_service.add_endpoint(
            conn, slug, url, types=types, settings=SETTINGS, now=utcnow()
        )
    assert made.secret is not None
    return made.secret


def _org(engine: Engine, slug: str = "acme") -> int:
    return factories.make_org(engine, slug, now=utcnow(), send_window="00:00-00:00")


def _by_type(events: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in events.values():
        out.setdefault(e["type"], []).append(e["data"])
    return out


def test_a_day_tells_the_host_each_text_sent_failed_skipped_delivered_and_the_day_done(
    engine: Engine, hook: Receiver, fake: FakeTwilio
) -> None:
    org = _org(engine)
    secret = _endpoint(engine, hook.url)
    today = utcnow().date()
    expires = today + timedelta(days=3)
    ok, bad, out = "+14155550101", "+14155550102", "+14155550103"
    for phone, ext in ((ok, "ok"), (bad, "bad"), (out, "out")):
        factories.add_subscription(engine, org, expires_on=expires, phone=phone, ext=ext)
    with engine.begin() as conn:
        orgs.set_opt_out(conn, "acme", out, opted_out=True, now=utcnow())
        plan_day(conn, now=utcnow(), orgs=load_orgs(conn))
        conn.execute(
            insert(DailyRun).values(
                org_id=org, local_date=today, status="planned", started_at=utcnow()
            )
        )
        pending = ledger.due_ids(conn, now=utcnow())
    fake.fail(bad, 21211, message="Invalid 'To' Phone Number")
    settings = fake.settings()
    sender = Sender(engine=engine, provider=TwilioProvider(settings), settings=settings)
    try:
        sender.send_ids(pending, ignore_window=True)
    finally:
        sender.close()
    sid = fake.sent_to(ok)[0].sid
    receipts.record_delivery(
        engine, message_sid=sid, status="delivered", error_code=None, now=utcnow()
    )
    with engine.begin() as conn:
        finished = dispatch.finish_days(conn, now=utcnow())
    assert [f.local_date for f in finished] == [today]

    report = deliver_due(engine, SETTINGS)
    assert report.delivered == 6 and report.dead == 0
    told = _by_type(hook.events(secret))
    assert sorted(told) == [
        "day.completed",
        "message.delivered",
        "message.failed",
        "message.sent",
        "message.skipped",
        "optout.created",
    ]
    (sent,) = told["message.sent"]
    assert (sent["customer_id"], sent["subscription_id"]) == ("c-ok", "s-ok")
    assert sent["provider_message_id"] == sid and sent["status"] == "sent"
    assert sent["organization"] == "acme" and sent["lead_days"] == 3 and sent["sent_at"]
    (failed,) = told["message.failed"]
    assert failed["customer_id"] == "c-bad" and failed["error_code"] == "21211"
    (skipped,) = told["message.skipped"]
    assert skipped["customer_id"] == "c-out" and skipped["reason"] == "opted_out"
    (delivered,) = told["message.delivered"]
    assert delivered["message_id"] == sent["message_id"]
    assert delivered["delivery_status"] == "delivered"
    (opted,) = told["optout.created"]
    assert opted["phone"] == out and opted["customer_ids"] == ["c-out"]
    (day,) = told["day.completed"]
    assert day["date"] == today.isoformat()
    assert day["counts"] == {"failed": 1, "sent": 1, "skipped": 1}


def test_no_event_for_a_change_rolled_back_and_none_without_an_endpoint(
    engine: Engine, hook: Receiver
) -> None:
    org = _org(engine)
    with engine.begin() as conn:  # no endpoint yet: nothing is written
        ledger.add_opt_out(conn, org_id=org, phone_e164="+14155550111", source="cli", now=utcnow())
    secret = _endpoint(engine, hook.url)
    with engine.connect() as conn:
        ledger.add_opt_out(conn, org_id=org, phone_e164="+14155550112", source="cli", now=utcnow())
        conn.rollback()
    with engine.begin() as conn:
        ledger.add_opt_out(conn, org_id=org, phone_e164="+14155550113", source="cli", now=utcnow())
    deliver_due(engine, SETTINGS)
    told = hook.events(secret)
    assert [e["data"]["phone"] for e in told.values()] == ["+14155550113"]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Event)).scalar_one() == 1


def test_an_endpoint_gets_only_the_types_it_asked_for_and_nothing_once_removed(
    engine: Engine, hook: Receiver
) -> None:
    org = _org(engine)
    _org(engine, "other")
    secret = _endpoint(engine, hook.url, types="optout.removed")
    now = utcnow()
    with receiver() as other_hook:
        other_secret = _endpoint(engine, other_hook.url, slug="other")
        with engine.begin() as conn:
            orgs.set_opt_out(conn, "acme", "+14155550121", opted_out=True, now=now)
            orgs.set_opt_out(conn, "acme", "+14155550121", opted_out=False, now=now)
            orgs.set_opt_out(conn, "other", "+14155550121", opted_out=True, now=now)
        deliver_due(engine, SETTINGS)
        theirs = other_hook.events(other_secret)
    told = hook.events(secret)
    assert [(e["type"], e["data"]["organization"]) for e in told.values()] == [
        ("optout.removed", "acme")
    ]
    assert [(e["type"], e["data"]["organization"]) for e in theirs.values()] == [
        ("optout.created", "other")
    ]

    with engine.connect() as conn:
        (endpoint,) = event_service.list_endpoints(conn, "acme")
    with engine.begin() as conn:
        ledger.add_opt_out(conn, org_id=org, phone_e164="+14155550122", source="cli", now=now)
        orgs.set_opt_out(conn, "acme", "+14155550122", opted_out=False, now=now)
    with engine.begin() as conn:
        assert event_service.remove_endpoint(conn, endpoint.id, now=now) == 1  # cancelled
    before = len(hook.requests)
    deliver_due(engine, SETTINGS)
    assert len(hook.requests) == before


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def test_a_failing_endpoint_is_retried_with_backoff_then_dead_then_replayed(
    engine: Engine, hook: Receiver
) -> None:
    org = _org(engine)
    secret = _endpoint(engine, hook.url)
    clock = Clock()
    settings = Settings(
        events_allow_private=True,
        events_backoff_seconds=60,
        events_backoff_max_seconds=600,
        events_retry_seconds=3600,
    )
    deliverer = Deliverer(engine, settings, clock=clock, jitter=lambda: 1.0)
    with engine.begin() as conn:
        ledger.add_opt_out(conn, org_id=org, phone_e164="+14155550131", source="cli", now=clock())
    hook.fail_for(3600)
    waits = []
    for _ in range(20):
        report = deliverer.run()
        assert (report.retrying, report.delivered) == (1, 0) or report.dead == 1
        with engine.connect() as conn:
            row = conn.execute(select(EventDelivery)).one()
        if row.status == "dead":
            break
        waits.append((row.next_attempt_at - clock()).total_seconds())
        clock.now = row.next_attempt_at
    assert waits[:5] == [60, 120, 240, 480, 600]  # doubling, capped (jitter 1.0: the full step)
    assert row.status == "dead" and row.last_status == 500
    assert all(r.answered == 500 for r in hook.requests)

    hook.fail_until = 0
    with engine.begin() as conn:
        assert event_service.replay(conn, now=clock()) == 1
    assert deliverer.run().delivered == 1
    assert [e["type"] for e in hook.events(secret).values()] == ["optout.created"]


def test_an_endpoint_on_a_private_address_is_refused_unless_allowed(engine: Engine) -> None:
    _org(engine)
    for url in ("http://127.0.0.1:9/x", "http://10.0.0.8/x", "http://localhost:8080/x"):
        with engine.begin() as conn, pytest.raises(ValidationError, match="private"):
            event_service.add_endpoint(
                conn, "acme", url, types=None, settings=Settings(), now=utcnow()
            )
    with engine.connect() as conn:
        assert event_service.list_endpoints(conn, "acme") == []


def test_a_day_completed_is_told_with_the_days_counts_once(engine: Engine, hook: Receiver) -> None:
    org = _org(engine)
    secret = _endpoint(engine, hook.url, types=["day.completed"])
    day = date(2026, 12, 6)
    with engine.begin() as conn:
        conn.execute(
            insert(DailyRun).values(
                org_id=org, local_date=day, status="planned", started_at=utcnow()
            )
        )
        dispatch.finish_days(conn, now=utcnow())
        dispatch.finish_days(conn, now=utcnow())
    deliver_due(engine, SETTINGS)
    (event,) = hook.events(secret).values()
    assert event["data"]["date"] == "2026-12-06" and event["data"]["counts"] == {}
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Reminder)).scalar_one() == 0


def test_cleanup_drops_events_told_long_ago_and_keeps_those_still_to_deliver(
    engine: Engine, hook: Receiver
) -> None:
    org = _org(engine)
    _endpoint(engine, hook.url)
    with engine.begin() as conn:
        ledger.add_opt_out(conn, org_id=org, phone_e164="+14155550141", source="cli", now=utcnow())
    deliver_due(engine, SETTINGS)  # told
    hook.fail_for(3600)
    with engine.begin() as conn:
        ledger.add_opt_out(conn, org_id=org, phone_e164="+14155550142", source="cli", now=utcnow())
    deliver_due(engine, SETTINGS)  # failed: pending, retried later

    def left() -> list[str]:
        with engine.connect() as conn:
            return sorted(conn.execute(select(EventDelivery.status)).scalars())

    dispatch.cleanup(engine, now=utcnow(), retention_days=1)
    assert left() == ["delivered", "pending"]  # nothing old enough yet
    dispatch.cleanup(engine, now=utcnow() + timedelta(days=2), retention_days=1)
    assert left() == ["pending"]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Event)).scalar_one() == 1

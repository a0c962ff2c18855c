"""Numbers the provider says cannot take texts (Twilio 30005/30006 on a callback, 21614 at
send): later texts to them are skipped ``undeliverable`` until the host changes the number."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import Engine, select

from app.db import ledger, undeliverable
from app.db.models import Customer, Reminder, UndeliverableNumber
from app.domain.planning import utcnow
from app.providers.twilio import TwilioProvider
from app.services import runner
from app.services.engine import load_orgs, plan_day
from app.services.sender import Sender
from app.services.subscriptions import update_customer
from app.webhook import receipts
from tests.factories import RecordingProvider, add_subscription, make_org, make_sender
from tests.ledger_rows import get_row
from tests.twilio_fake import FakeTwilio

TODAY = date(2026, 6, 10)
LANDLINE = "+12025550143"
MOBILE = "+12025550188"


@pytest.fixture
def provider() -> RecordingProvider:
    return RecordingProvider()


@pytest.fixture
def sender(pg_engine: Engine, provider: RecordingProvider) -> Iterator[Sender]:
    s = make_sender(pg_engine, provider)
    yield s
    s.close()


def _rows(engine: Engine) -> list[tuple[int, str, str | None]]:
    with engine.connect() as conn:
        stmt = select(Reminder.lead_days, Reminder.status, Reminder.reason).order_by(Reminder.id)
        return [tuple(r) for r in conn.execute(stmt)]  # type: ignore[misc]


def _marked(engine: Engine) -> set[tuple[int, str, str]]:
    with engine.connect() as conn:
        stmt = select(
            UndeliverableNumber.org_id,
            UndeliverableNumber.phone_e164,
            UndeliverableNumber.error_code,
        )
        return {tuple(r) for r in conn.execute(stmt)}  # type: ignore[misc]


def test_after_a_30005_callback_the_next_lead_days_text_is_skipped(
    pg_engine: Engine, sender: Sender, provider: RecordingProvider
) -> None:
    with freeze_time("2026-06-10 12:00:00"):
        org = make_org(pg_engine, now=utcnow(), lead_days="3,1")
        add_subscription(pg_engine, org, expires_on=TODAY + timedelta(days=3), phone=LANDLINE)
        runner.run_day(pg_engine, sender)
        assert _rows(pg_engine) == [(3, "sent", None)]
        with pg_engine.connect() as conn:
            sid = conn.execute(select(Reminder.provider_message_id)).scalar_one()
        receipts.record_delivery(
            pg_engine, message_sid=sid, status="undelivered", error_code="30005", now=utcnow()
        )
        assert _marked(pg_engine) == {(org, LANDLINE, "30005")}
    with freeze_time("2026-06-12 12:00:00"):
        runner.run_day(pg_engine, sender)
    assert _rows(pg_engine) == [(3, "sent", None), (1, "skipped", "undeliverable")]
    assert [to for to, _, _ in provider.sent] == [LANDLINE]  # one text, the first


def test_a_number_marked_after_planning_is_skipped_at_the_senders_re_check(
    pg_engine: Engine, sender: Sender, provider: RecordingProvider
) -> None:
    """A 30006 for an earlier text lands between planning and sending."""
    with freeze_time("2026-06-10 12:00:00"):
        org = make_org(pg_engine, now=utcnow(), lead_days="3")
        add_subscription(pg_engine, org, expires_on=TODAY + timedelta(days=3), phone=LANDLINE)
        with pg_engine.begin() as conn:
            plan_day(conn, now=utcnow(), orgs=load_orgs(conn))
            undeliverable.mark(conn, org_id=org, phone_e164=LANDLINE, code="30006", now=utcnow())
            ids = ledger.due_ids(conn, now=utcnow())
        sender.send_ids(ids, ignore_window=True)
    assert _rows(pg_engine) == [(3, "skipped", "undeliverable")]
    assert provider.sent == []


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


def test_21614_at_send_fails_the_text_and_later_ones_are_skipped(
    pg_engine: Engine, fake: FakeTwilio
) -> None:
    settings = fake.settings(rate_per_second=1000.0)
    fake.fail(LANDLINE, 21614, message="'To' number is not a valid mobile number")
    now = datetime.now(UTC)
    org = make_org(pg_engine, now=now, lead_days="5,3", send_window="00:00-00:00")
    today = now.date()
    add_subscription(pg_engine, org, expires_on=today + timedelta(days=3), phone=LANDLINE)
    add_subscription(pg_engine, org, expires_on=today + timedelta(days=5), phone=LANDLINE)
    add_subscription(pg_engine, org, expires_on=today + timedelta(days=3), phone=MOBILE)
    sender = Sender(engine=pg_engine, provider=TwilioProvider(settings), settings=settings)
    try:
        with pg_engine.begin() as conn:
            plan_day(conn, now=now, orgs=load_orgs(conn))
            first, second, mobile = ledger.due_ids(conn, now=now)
        sender.send_ids([first, mobile], ignore_window=True)
        failed = get_row(pg_engine, first)
        assert (failed.status, failed.reason, failed.error_code) == (
            "failed",
            "undeliverable",
            "21614",
        )
        assert _marked(pg_engine) == {(org, LANDLINE, "21614")}
        sender.send_ids([second], ignore_window=True)
    finally:
        sender.close()
    later = get_row(pg_engine, second)
    assert (later.status, later.reason) == ("skipped", "undeliverable")
    assert get_row(pg_engine, mobile).status == "sent"
    assert [m.to for m in fake.messages] == [MOBILE]


def test_a_changed_number_is_texted_and_an_old_days_skip_stays(
    pg_engine: Engine, sender: Sender, provider: RecordingProvider
) -> None:
    with freeze_time("2026-06-10 12:00:00"):
        org = make_org(pg_engine, now=utcnow(), lead_days="5,3")
        add_subscription(pg_engine, org, expires_on=TODAY + timedelta(days=5), phone=LANDLINE)
        add_subscription(pg_engine, org, expires_on=TODAY + timedelta(days=7), phone=LANDLINE)
        with pg_engine.begin() as conn:
            undeliverable.mark(conn, org_id=org, phone_e164=LANDLINE, code="30006", now=utcnow())
        runner.run_day(pg_engine, sender)
        assert _rows(pg_engine) == [(5, "skipped", "undeliverable")]
    with freeze_time("2026-06-12 12:00:00"):
        runner.run_day(pg_engine, sender)  # both subscriptions' texts skipped, on two days
        assert _rows(pg_engine) == [
            (5, "skipped", "undeliverable"),
            (3, "skipped", "undeliverable"),
            (5, "skipped", "undeliverable"),
        ]
        with pg_engine.begin() as conn:
            ext = conn.execute(
                select(Customer.external_id).order_by(Customer.id).limit(1)
            ).scalar_one()
            update_customer(conn, "acme", ext, {"phone": MOBILE})
        with pg_engine.connect() as conn:
            due = ledger.due_ids(conn, now=utcnow())
        sender.send_ids(due, ignore_window=True)
    rows = _rows(pg_engine)
    # The customer changed was the first subscription's: today's text (3 days left) goes to
    # the new number; its text of two days ago stays skipped; the other customer is untouched.
    assert rows == [
        (5, "skipped", "undeliverable"),
        (3, "sent", None),
        (5, "skipped", "undeliverable"),
    ]
    assert [to for to, _, _ in provider.sent] == [MOBILE]
    assert _marked(pg_engine) == {(org, LANDLINE, "30006")}  # the mark is the number's

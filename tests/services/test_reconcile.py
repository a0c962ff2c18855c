"""Reconciliation against the local fake Messages API, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import Engine

from app.providers.console import ConsoleProvider
from app.providers.twilio import TwilioProvider
from app.services.reconcile import ReconcileReport, reconcile
from app.services.sender import Sender
from app.settings import Settings
from tests import factories
from tests.ledger_rows import get_row, make_org, make_row
from tests.twilio_fake import Behaviour, FakeTwilio

TO = "+14155552671"
BODY = "Your plan ends in 3 days"
STALE = 900.0


def settings_for(fake: FakeTwilio, **overrides: object) -> Settings:
    return fake.settings(stale_sending_seconds=STALE, **overrides)


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


@pytest.fixture
def provider(fake: FakeTwilio) -> Iterator[TwilioProvider]:
    p = TwilioProvider(settings_for(fake))
    yield p
    p.close()


def run(engine: Engine, provider: object, now: datetime) -> ReconcileReport:
    return reconcile(engine, provider, now=now, stale_sending_seconds=STALE)  # type: ignore[arg-type]


def test_unknown_found_at_twilio_becomes_sent(
    engine: Engine, fake: FakeTwilio, provider: TwilioProvider
) -> None:
    now = datetime.now(UTC)
    org = make_org(engine)
    rid = make_row(engine, org, status="unknown", claimed_at=now - timedelta(seconds=30))
    message = fake.add_message(TO, BODY, from_="+15005550006", status="delivered")

    report = run(engine, provider, now)

    assert (report.checked, report.sent) == (1, 1)
    row = get_row(engine, rid)
    assert row.status == "sent" and row.provider_message_id == message.sid
    assert row.delivery_status == "delivered" and row.reason is None


def test_unknown_not_found_after_safe_delay_gets_one_more_attempt(
    engine: Engine, provider: TwilioProvider
) -> None:
    now = datetime.now(UTC)
    org = make_org(engine)
    old = make_row(engine, org, status="unknown", claimed_at=now - timedelta(minutes=10))
    recent = make_row(
        engine, org, phone="+14155550101", status="unknown", claimed_at=now - timedelta(seconds=20)
    )

    report = run(engine, provider, now)

    assert (report.retried, report.waiting) == (1, 1)
    retried = get_row(engine, old)
    assert retried.status == "pending" and retried.next_attempt_at == now
    assert retried.reason == "reconciled_not_sent"
    assert get_row(engine, recent).status == "unknown"  # the provider's list may lag: ask later


def test_message_before_the_attempt_does_not_count(
    engine: Engine, fake: FakeTwilio, provider: TwilioProvider
) -> None:
    now = datetime.now(UTC)
    org = make_org(engine)
    rid = make_row(engine, org, status="unknown", claimed_at=now - timedelta(minutes=10))
    fake.add_message(TO, BODY, from_="+15005550006", created=now - timedelta(days=2))

    assert run(engine, provider, now).retried == 1
    assert get_row(engine, rid).status == "pending"


def test_stale_sending_rows_are_reconciled_fresh_ones_left(
    engine: Engine, fake: FakeTwilio, provider: TwilioProvider
) -> None:
    now = datetime.now(UTC)
    org = make_org(engine)
    stale = make_row(engine, org, status="sending", claimed_at=now - timedelta(seconds=STALE + 60))
    fresh = make_row(
        engine, org, phone="+14155550102", status="sending", claimed_at=now - timedelta(seconds=5)
    )
    fake.add_message(TO, BODY, from_="+15005550006", created=now - timedelta(seconds=STALE + 30))

    report = run(engine, provider, now)

    assert (report.checked, report.sent) == (1, 1)
    assert get_row(engine, stale).status == "sent"
    assert get_row(engine, fresh).status == "sending"


def test_provider_that_cannot_be_asked_sends_rows_back_to_pending(engine: Engine) -> None:
    now = datetime.now(UTC)
    org = make_org(engine)
    unknown = make_row(engine, org, status="unknown", claimed_at=now - timedelta(seconds=5))
    stale = make_row(
        engine, org, phone="+14155550103", status="sending", claimed_at=now - timedelta(hours=1)
    )

    report = run(engine, ConsoleProvider(), now)

    assert report.retried == 2
    assert get_row(engine, unknown).status == "pending"
    assert get_row(engine, stale).status == "pending"


def test_provider_down_leaves_rows_alone(engine: Engine, fake: FakeTwilio) -> None:
    now = datetime.now(UTC)
    org = make_org(engine)
    rid = make_row(engine, org, status="unknown", claimed_at=now - timedelta(hours=1))
    provider = TwilioProvider(settings_for(fake))
    fake.stop()
    try:
        report = run(engine, provider, now)
    finally:
        provider.close()
    assert report.errors == 1
    assert get_row(engine, rid).status == "unknown"


def test_since_limits_by_local_date(engine: Engine, provider: TwilioProvider) -> None:
    now = datetime.now(UTC)
    org = make_org(engine)
    old_day = now.date() - timedelta(days=3)
    rid = make_row(
        engine, org, status="unknown", today=old_day, claimed_at=now - timedelta(hours=1)
    )
    report = reconcile(engine, provider, now=now, stale_sending_seconds=STALE, since=now.date())
    assert report.checked == 0 and get_row(engine, rid).status == "unknown"


def test_concurrent_reconcilers_move_each_row_once(
    pg_engine: Engine, fake: FakeTwilio, provider: TwilioProvider
) -> None:
    now = datetime.now(UTC)
    org = make_org(pg_engine)
    ids = [
        make_row(
            pg_engine,
            org,
            phone=f"+1415555{i:04d}",
            status="unknown",
            claimed_at=now - timedelta(hours=1),
        )
        for i in range(20)
    ]
    for i in range(0, 20, 2):  # half were accepted by Twilio, half never arrived
        fake.add_message(f"+1415555{i:04d}", BODY, from_="+15005550006")
    fake.delay = 0.01  # widen the window between the lookup and the update
    reports: list[ReconcileReport] = []
    barrier = threading.Barrier(2)

    def go() -> None:
        barrier.wait()
        reports.append(run(pg_engine, provider, now))

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sum(r.sent for r in reports) == 10
    assert sum(r.retried for r in reports) == 10
    assert sum(r.sent + r.retried + r.lost for r in reports) == 40
    statuses = sorted(get_row(pg_engine, rid).status for rid in ids)
    assert statuses == ["pending"] * 10 + ["sent"] * 10


def test_read_timeout_through_the_engine_then_reconcile_never_sends_twice(
    engine: Engine, fake: FakeTwilio
) -> None:
    """The whole path: the send times out after Twilio took it, reconcile finds it."""
    settings = settings_for(fake, twilio_timeout_seconds=0.3)
    provider = TwilioProvider(settings)
    org = make_org(engine)
    rid = make_row(engine, org)
    fake.behave(TO, Behaviour(delay=1.0, accept=True))
    sender = Sender(engine=engine, provider=provider, settings=settings)
    try:
        report = sender.send_ids([rid], ignore_window=True)
        assert report.unknown == 1
        row = get_row(engine, rid)
        assert row.status == "unknown" and row.attempts == 1
        assert row.claimed_at is not None

        later = row.claimed_at + timedelta(minutes=10)
        with freeze_time(later):
            settled = reconcile(engine, provider, now=later, stale_sending_seconds=STALE)
        assert settled.sent == 1
        row = get_row(engine, rid)
        assert row.status == "sent" and row.provider_message_id == fake.messages[0].sid

        # A second run finds nothing left to do, and nothing was sent again.
        assert sender.send_ids([rid], ignore_window=True).sent == 0
        assert len(fake.messages) == 1
    finally:
        sender.close()
        provider.close()


def test_a_twilio_send_may_wait_in_twilios_queue_only_until_the_window_closes(
    engine: Engine, fake: FakeTwilio
) -> None:
    """R4 at the provider: Twilio delivers texts queued above a sender's rate up to 10 hours
    late; ValidityPeriod makes it drop one the window would refuse."""
    settings = settings_for(fake)
    provider = TwilioProvider(settings)
    now = datetime.now(UTC)
    closes = (now + timedelta(hours=2)).replace(second=0, microsecond=0)
    window = f"{(now - timedelta(hours=1)):%H:%M}-{closes:%H:%M}"
    org = factories.make_org(engine, "windowed", now=now, send_window=window, send_time=window[:5])
    all_day = make_org(engine)
    ids = [make_row(engine, org), make_row(engine, all_day, phone="+14155550142")]
    sender = Sender(engine=engine, provider=provider, settings=settings)
    try:
        assert sender.send_ids(ids).sent == 2
    finally:
        sender.close()
        provider.close()
    by_to = {m.to: m for m in fake.messages}
    left = (closes - now).total_seconds()
    assert left - 30 <= int(by_to[TO].validity_period or 0) <= left
    assert by_to["+14155550142"].validity_period is None  # all day: Twilio's own 10 hours

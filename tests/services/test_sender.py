"""The send path against the local fake Messages API: the circuit breaker, the claim at the
slot, and what an attempt fixes on its row (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import Engine, func, select

from app.db import ledger
from app.db.models import Reminder
from app.providers.twilio import TwilioProvider
from app.services import runner
from app.services.reconcile import reconcile
from app.services.sender import Sender
from app.settings import Settings
from tests.ledger_rows import get_row, make_org, make_row
from tests.twilio_fake import Behaviour, FakeTwilio


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


def _sender(engine: Engine, settings: Settings) -> Sender:
    return Sender(engine=engine, provider=TwilioProvider(settings), settings=settings)


def _phones(n: int) -> list[str]:
    return [f"+1415555{2000 + i:04d}" for i in range(n)]


def test_an_outage_keeps_texts_pending_with_their_retries_then_sends_each_once(
    engine: Engine, fake: FakeTwilio
) -> None:
    """The provider fails for everyone: the circuit opens after a few errors across different
    numbers, texts wait instead of using up their attempts, status says since when; after the
    outage every text goes out once and none is failed."""
    settings = fake.settings(max_attempts=2, retry_backoff_seconds=1.0)
    org = make_org(engine)
    phones = _phones(12)
    ids = [make_row(engine, org, phone=p) for p in phones]
    sender = _sender(engine, settings)
    fake.outage(status=503)
    try:
        for _ in range(3):  # three rounds of the outage: more than the whole retry budget
            with engine.connect() as conn:
                due = ledger.due_ids(conn, now=datetime.now(UTC))
            sender.send_ids(due or ids, ignore_window=True)
            time.sleep(1.1)
        rows = [get_row(engine, rid) for rid in ids]
        assert {r.status for r in rows} == {"pending"}
        assert max(r.attempts for r in rows) <= 1  # the outage's errors used up no retries
        assert sum(r.attempts for r in rows) <= 4  # only those before the circuit opened
        opened = runner.open_circuits(engine)
        assert list(opened) == [f"twilio:{fake.account_sid}"]

        fake.recover()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                due = ledger.due_ids(conn, now=datetime.now(UTC))
            if not due and all(get_row(engine, rid).status == "sent" for rid in ids):
                break
            if due:
                sender.send_ids(due, ignore_window=True)
            time.sleep(0.2)
    finally:
        sender.close()
    assert {get_row(engine, rid).status for rid in ids} == {"sent"}
    assert sorted(m.to for m in fake.messages) == sorted(phones)
    assert runner.open_circuits(engine) == {}


def test_one_number_failing_while_others_get_through_uses_up_its_retries(
    engine: Engine, fake: FakeTwilio
) -> None:
    settings = fake.settings(max_attempts=2, retry_backoff_seconds=0.0)
    org = make_org(engine)
    bad, *good = _phones(4)
    fake.behave(bad, Behaviour(status=503, code=20500, message="Service unavailable"))
    ids = [make_row(engine, org, phone=p) for p in (bad, *good)]
    sender = _sender(engine, settings)
    try:
        sender.send_ids(ids, ignore_window=True)
        sender.send_ids(ids[:1], ignore_window=True)
    finally:
        sender.close()
    row = get_row(engine, ids[0])
    assert (row.status, row.reason, row.attempts) == ("failed", "retries_exhausted", 2)
    assert runner.open_circuits(engine) == {}


def test_a_row_is_claimed_just_before_its_request(pg_engine: Engine, fake: FakeTwilio) -> None:
    """Never more rows in ``sending`` than requests in flight (SMS_CONCURRENCY): the rest of a
    batch stays ``pending``, so a crash leaves only those few uncertain."""
    settings = fake.settings(send_concurrency=3, rate_per_second=1000.0)
    fake.delay = 0.15
    org = make_org(pg_engine)
    ids = [make_row(pg_engine, org, phone=p) for p in _phones(24)]
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            with pg_engine.connect() as conn:
                seen.append(
                    conn.execute(
                        select(func.count()).where(Reminder.status == "sending")
                    ).scalar_one()
                )
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    sender = _sender(pg_engine, settings)
    try:
        report = sender.send_ids(ids, ignore_window=True)
    finally:
        done.set()
        watcher.join()
        sender.close()
    assert report.sent == 24
    assert max(seen) <= 3 and max(seen) >= 1


def test_reconciliation_finds_the_text_as_it_was_sent_on_a_later_day(
    engine: Engine, fake: FakeTwilio
) -> None:
    """A text planned yesterday (3 days left) goes today with today's count (2); Twilio takes
    it but the answer never comes. The row holds the body that was asked for, so
    reconciliation on the next day finds it: sent once, never again."""
    settings = fake.settings(twilio_timeout_seconds=0.3)
    org = make_org(engine)
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    rid = make_row(engine, org, today=yesterday, body="Your plan ends in 3 days (planned)")
    fake.behave("+14155552671", Behaviour(delay=1.0, accept=True))
    sender = _sender(engine, settings)
    try:
        assert sender.send_ids([rid], ignore_window=True).unknown == 1
    finally:
        sender.close()
    row = get_row(engine, rid)
    assert row.status == "unknown" and row.days_left == 2
    assert row.body == fake.messages[0].body and "2 days" in row.body
    assert row.claimed_at is not None

    tomorrow = row.claimed_at + timedelta(days=1)
    provider = TwilioProvider(settings)
    try:
        with freeze_time(tomorrow):
            report = reconcile(engine, provider, now=tomorrow, stale_sending_seconds=900)
    finally:
        provider.close()
    assert report.sent == 1
    row = get_row(engine, rid)
    assert (row.status, row.provider_message_id) == ("sent", fake.messages[0].sid)
    assert len(fake.messages) == 1


def test_a_row_asked_for_twice_in_one_claim_is_won_once(engine: Engine) -> None:
    """A redelivered batch lands in the process beside the original: both lanes ask for the
    same rows, in one claim statement, and only one of them may win each row."""
    import asyncio

    from app.domain.planning import utcnow
    from app.services.send.claims import Claimer
    from app.services.send.prepare import pending_orgs, prepare

    org = make_org(engine)
    ids = [make_row(engine, org, phone=p) for p in _phones(5)]
    with engine.begin() as conn:
        org_of, orgs = pending_orgs(conn, ids)
        texts = prepare(
            conn,
            org_of,
            orgs,
            now=utcnow(),
            ignore_window=True,
            sender_of=lambda o: ("k", 10.0),
            retry_backoff=1.0,
        ).texts
    claimer = Claimer(engine, utcnow)

    async def both() -> list[dict[int, int]]:
        return list(await asyncio.gather(claimer.claim(texts), claimer.claim(texts[::-1])))

    try:
        first, second = asyncio.run(both())
    finally:
        claimer.close()
    assert set(first) | set(second) == set(ids)
    assert not set(first) & set(second), "a row was given to two senders"
    assert {get_row(engine, rid).attempts for rid in ids} == {1}


def test_one_process_given_the_same_rows_twice_sends_each_once(engine: Engine) -> None:
    """A redelivered batch lands in the process beside the original: both ask for the same
    rows, often in one claim statement, and only one of them may win each row."""
    from tests.factories import RecordingProvider, make_sender

    org = make_org(engine)
    ids = [make_row(engine, org, phone=p) for p in _phones(40)]
    provider = RecordingProvider()
    sender = make_sender(engine, provider)
    try:
        first = sender.submit_ids(ids, ignore_window=True)
        again = sender.submit_ids(list(reversed(ids)), ignore_window=True)
        reports = [first.result(timeout=60), again.result(timeout=60)]
    finally:
        sender.close()
    assert sum(r.sent for r in reports) == 40
    assert sorted(to for to, _, _ in provider.sent) == sorted(_phones(40))
    assert {get_row(engine, rid).status for rid in ids} == {"sent"}

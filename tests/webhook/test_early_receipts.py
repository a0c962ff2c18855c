"""Status callbacks that arrive before their message's SID is recorded: kept, then applied when
the send's answer lands, as if they had come after it (real PostgreSQL; SQLite for one)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from app.db import early_receipts, ledger
from app.db.models import EarlyReceipt, UndeliverableNumber
from app.providers.twilio import TwilioProvider
from app.services.sender import Sender
from app.webhook import receipts
from tests.ledger_rows import get_row, make_org, make_row
from tests.twilio_fake import FakeTwilio

NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


def _sid() -> str:
    return "SM" + uuid.uuid4().hex


def _kept(engine: Engine) -> int:
    with engine.connect() as conn:
        return early_receipts.count(conn)


def _callback(engine: Engine, sid: str, status: str, code: str | None = None) -> bool:
    return receipts.record_delivery(
        engine, message_sid=sid, status=status, error_code=code, now=NOW
    )


def _sent(engine: Engine, row_id: int, sid: str) -> None:
    with engine.begin() as conn:
        moved = ledger.record(conn, [ledger.Sent(row_id, 1, sid, NOW)], now=NOW)
    assert moved == {ledger.Sent: 1}


def test_a_callback_before_the_sid_is_applied_when_the_send_lands(engine: Engine) -> None:
    org = make_org(engine)
    rid = make_row(engine, org, status="sending", attempts=1)
    sid = _sid()

    assert _callback(engine, sid, "sent") is False
    assert _callback(engine, sid, "delivered") is False
    assert _callback(engine, sid, "delivered") is False  # repeated: kept once
    assert _kept(engine) == 2
    assert get_row(engine, rid).delivery_status is None

    _sent(engine, rid, sid)

    row = get_row(engine, rid)
    assert (row.status, row.provider_message_id, row.delivery_status) == ("sent", sid, "delivered")
    assert _kept(engine) == 0


def test_an_unknown_row_found_by_reconciliation_takes_its_early_callbacks(
    pg_engine: Engine,
) -> None:
    org = make_org(pg_engine)
    rid = make_row(pg_engine, org, status="unknown", attempts=1)
    sid = _sid()
    _callback(pg_engine, sid, "undelivered", "30003")
    with pg_engine.begin() as conn:
        claimed = get_row(pg_engine, rid).claimed_at
        assert ledger.settle_unknown(
            conn, rid, status="unknown", claimed_at=claimed, found=(sid, NOW, None), now=NOW
        )
    row = get_row(pg_engine, rid)
    assert (row.status, row.delivery_status, row.error_code) == ("sent", "undelivered", "30003")


def test_a_callback_for_a_send_test_text_is_not_kept(pg_engine: Engine) -> None:
    from app.db.models import SendTestMessage

    org = make_org(pg_engine)
    sid = _sid()
    with pg_engine.begin() as conn:
        conn.execute(
            SendTestMessage.__table__.insert().values(
                org_id=org,
                phone="+14155552671",
                lead_days=3,
                body="x",
                segments=1,
                encoding="GSM-7",
                status="sent",
                provider_message_id=sid,
                created_at=NOW,
            )
        )
    _callback(pg_engine, sid, "delivered")
    assert _kept(pg_engine) == 0


def test_callbacks_never_matched_are_purged_after_a_week(pg_engine: Engine) -> None:
    receipts.record_delivery(
        pg_engine, message_sid=_sid(), status="delivered", error_code=None, now=NOW
    )
    receipts.record_delivery(
        pg_engine,
        message_sid=_sid(),
        status="delivered",
        error_code=None,
        now=NOW + timedelta(days=6),
    )
    with pg_engine.begin() as conn:
        assert early_receipts.purge(conn, now=NOW + early_receipts.KEEP + timedelta(seconds=1))
    assert _kept(pg_engine) == 1  # the newer one stays


def test_an_early_30005_marks_the_number_when_the_send_lands(pg_engine: Engine) -> None:
    org = make_org(pg_engine)
    rid = make_row(pg_engine, org, status="sending", attempts=1, phone="+14155550111")
    sid = _sid()
    _callback(pg_engine, sid, "undelivered", "30005")
    _sent(pg_engine, rid, sid)
    with pg_engine.connect() as conn:
        marked = conn.execute(
            select(UndeliverableNumber.org_id, UndeliverableNumber.phone_e164)
        ).all()
    assert marked == [(org, "+14155550111")]
    assert get_row(pg_engine, rid).delivery_status == "undelivered"


# --- the order of (callbacks, SID) never changes what the row ends with ----------------------

_RECEIPT = st.one_of(
    st.tuples(
        st.sampled_from(["queued", "sending", "sent", "delivered", "read", "accepted"]),
        st.none(),
    ),
    st.tuples(st.sampled_from(["undelivered", "failed"]), st.sampled_from(["30003", "30007"])),
    st.just(("failed", "30036")),
    st.just(("bogus", None)),
)


def _final(engine: Engine, org: int, receipts_: list[tuple[str, str | None]], early: int) -> tuple:
    """The row after the first ``early`` callbacks came before its SID, the rest after."""
    rid = make_row(engine, org, status="sending", attempts=1)
    sid = _sid()
    for status, code in receipts_[:early]:
        _callback(engine, sid, status, code)
    _sent(engine, rid, sid)
    for status, code in receipts_[early:]:
        _callback(engine, sid, status, code)
    r = get_row(engine, rid)
    return (
        r.status,
        r.reason,
        r.delivery_status,
        r.error_code,
        r.next_attempt_at,
        r.provider_message_id is None,
    )


# Twilio calls back once per status of a message (a retried callback repeats it whole): kept
# callbacks are keyed by (SID, status), so each status comes once here, some of them twice.
# 40 examples (about 4 s on real PostgreSQL): the CI budget; the rule itself is app.domain.delivery.
@settings(max_examples=40)
@given(receipts_=st.lists(_RECEIPT, max_size=6, unique_by=lambda r: r[0]), data=st.data())
def test_the_order_of_callbacks_and_sid_never_changes_the_final_status(
    pg_engine: Engine, receipts_: list[tuple[str, str | None]], data: st.DataObject
) -> None:
    org = make_org(pg_engine)
    if receipts_:
        again = data.draw(st.lists(st.sampled_from(receipts_), max_size=2), label="repeated")
        receipts_ = data.draw(st.permutations(receipts_ + again), label="arrival order")
    early = data.draw(st.integers(0, len(receipts_)), label="callbacks before the SID")
    assert _final(pg_engine, org, receipts_, early) == _final(pg_engine, org, receipts_, 0)


# --- against the real send path --------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


def test_twilio_calls_back_before_its_answer_to_the_send_lands(
    pg_engine: Engine, fake: FakeTwilio
) -> None:
    """The double records the message, then answers half a second later; the callback comes
    in between (as Twilio's can): the row still ends delivered."""
    settings = fake.settings(rate_per_second=1000.0)
    fake.delay = 0.5
    org = make_org(pg_engine)
    rid = make_row(pg_engine, org)
    posted = threading.Event()

    def call_back() -> None:
        deadline = time.monotonic() + 10
        while not fake.messages and time.monotonic() < deadline:
            time.sleep(0.01)
        sid = fake.messages[0].sid
        receipts.record_delivery(
            pg_engine, message_sid=sid, status="delivered", error_code=None, now=NOW
        )
        posted.set()

    watcher = threading.Thread(target=call_back)
    watcher.start()
    sender = Sender(engine=pg_engine, provider=TwilioProvider(settings), settings=settings)
    try:
        sender.send_ids([rid], ignore_window=True)
    finally:
        sender.close()
        watcher.join(15)
    assert posted.is_set()
    row = get_row(pg_engine, rid)
    assert (row.status, row.delivery_status) == ("sent", "delivered")
    with pg_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(EarlyReceipt)).scalar_one() == 0

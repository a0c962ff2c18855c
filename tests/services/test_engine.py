"""The engine's promises, on SQLite and on real PostgreSQL: never twice, never missed, always
true, right local day, never to the wrong person."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from datetime import time as time_of_day

import pytest
from freezegun import freeze_time
from sqlalchemy import Engine, delete, func, insert, select, update

from app.db import ledger
from app.db.models import Customer, Organization, Reminder, Subscription, Template
from app.domain.planning import utcnow
from app.providers.base import PermanentError, TransientError, UnknownOutcomeError
from app.services import runner
from app.services.engine import load_orgs, plan_day
from app.services.send.pacing import BOOK_AHEAD, RATE_MARGIN
from app.services.sender import Sender
from tests.factories import (
    RecordingProvider,
    add_subscription,
    ledger_rows,
    make_org,
    make_sender,
)

TODAY = date(2026, 6, 10)


@pytest.fixture
def provider() -> RecordingProvider:
    return RecordingProvider()


@pytest.fixture
def sender(engine: Engine, provider: RecordingProvider) -> Iterator[Sender]:
    s = make_sender(engine, provider, retry_backoff_seconds=60.0, max_attempts=3)
    yield s
    s.close()


def run(engine: Engine, sender: Sender, **kw: object) -> dict[str, object]:
    return runner.run_day(engine, sender, **kw).as_dict()  # type: ignore[arg-type]


@freeze_time("2026-06-10 12:00:00")
def test_due_reminders_go_out_once_and_a_rerun_sends_nothing(
    engine: Engine, sender: Sender, provider: RecordingProvider
) -> None:
    org = make_org(engine, now=utcnow())
    for days in (5, 4, 3, 1, 0, 6, -1):
        add_subscription(
            engine,
            org,
            expires_on=TODAY + timedelta(days=days),
            phone=f"+1202555{100 + days + 10:04d}",
        )
    first = run(engine, sender)
    assert first["planned"] == 4 and first["sent"] == 4  # 5, 4 (catch-up of lead 5), 3, 1
    assert sorted(r["lead_days"] for r in ledger_rows(engine)) == [1, 3, 5, 5]
    second = run(engine, sender)
    assert second["planned"] == 0 and second["sent"] == 0
    assert len(provider.sent) == 4


@freeze_time("2026-06-10 12:00:00")
def test_body_says_the_real_days_left(
    engine: Engine, sender: Sender, provider: RecordingProvider
) -> None:
    org = make_org(engine, now=utcnow())
    add_subscription(engine, org, expires_on=TODAY + timedelta(days=4), name="Kim")
    run(engine, sender)
    (row,) = ledger_rows(engine)
    assert row["lead_days"] == 5 and row["days_left"] == 4
    assert "in 4 days" in str(row["body"]) and "Kim" in str(row["body"])
    assert row["segments"] == 1 and row["encoding"] == "GSM-7"


@freeze_time("2026-06-10 12:00:00")
def test_the_daily_runs_plan_leaves_the_text_to_be_rendered_as_it_leaves(
    engine: Engine, sender: Sender, provider: RecordingProvider
) -> None:
    """Planned without bodies (the daily run's way), the same rows as a rendered plan; each
    text is rendered when it is sent, and its claim writes what went."""
    org = make_org(engine, now=utcnow())
    for days, phone in ((4, "+12025550141"), (3, "+12025550142"), (1, "bad")):
        add_subscription(engine, org, expires_on=TODAY + timedelta(days=days), phone=phone)
    with engine.begin() as conn:
        report = plan_day(conn, now=utcnow(), orgs=load_orgs(conn), render=False)
    assert (report.planned, report.skipped, report.rendered) == (3, 1, 0)
    planned = {r["phone"]: r for r in ledger_rows(engine)}
    assert {p: (r["status"], r["lead_days"], r["days_left"]) for p, r in planned.items()} == {
        "+12025550141": ("pending", 5, 4),
        "+12025550142": ("pending", 3, 3),
        "bad": ("skipped", 1, 1),
    }
    assert all(r["body"] is None for r in planned.values())
    with engine.begin() as conn:  # a re-run adds nothing
        assert plan_day(conn, now=utcnow(), orgs=load_orgs(conn), render=False).planned == 0
    # A template edited after planning still applies: nothing was rendered yet.
    with engine.begin() as conn:
        conn.execute(
            insert(Template).values(
                org_id=org, lead_days=5, body="{{ days_left }} left", updated_at=utcnow()
            )
        )
    assert run(engine, sender)["sent"] == 2
    sent = {r["phone"]: r for r in ledger_rows(engine) if r["status"] == "sent"}
    assert sent["+12025550141"]["body"] == "4 left"
    assert "in 3 days" in str(sent["+12025550142"]["body"])
    assert sorted(body for _, body, _ in provider.sent) == sorted(
        str(r["body"]) for r in sent.values()
    )
    assert all(r["segments"] == 1 and r["encoding"] == "GSM-7" for r in sent.values())


def test_catch_up_after_missed_days_sends_the_nearest_reminder_once(
    engine: Engine, sender: Sender, provider: RecordingProvider
) -> None:
    with freeze_time("2026-06-10 12:00:00"):
        org = make_org(engine, now=utcnow())
        add_subscription(engine, org, expires_on=TODAY + timedelta(days=5))
        run(engine, sender)  # lead 5
    # The service is down for days 4 and 3 left; it comes back with 2 days left.
    with freeze_time("2026-06-13 12:00:00"):
        result = run(engine, sender)
        assert result["sent"] == 1
    leads = [(r["lead_days"], r["days_left"], r["status"]) for r in ledger_rows(engine)]
    assert leads == [(5, 5, "sent"), (3, 2, "sent")]
    assert "in 2 days" in provider.sent[-1][1]
    with freeze_time("2026-06-14 12:00:00"):
        run(engine, sender)  # 1 day left: lead 1
    with freeze_time("2026-06-15 12:00:00"):
        assert run(engine, sender)["planned"] == 0  # expiry day: nothing (no lead 0)
    with freeze_time("2026-06-16 12:00:00"):
        assert run(engine, sender)["planned"] == 0  # expired: nothing
    assert len(provider.sent) == 3


def test_renewal_starts_a_fresh_cycle(
    engine: Engine, sender: Sender, provider: RecordingProvider
) -> None:
    with freeze_time("2026-06-10 12:00:00"):
        org = make_org(engine, now=utcnow())
        sub = add_subscription(engine, org, expires_on=TODAY + timedelta(days=3))
        run(engine, sender)
        with engine.begin() as conn:
            conn.execute(
                update(Subscription)
                .where(Subscription.id == sub)
                .values(expires_on=TODAY + timedelta(days=33))
            )
    with freeze_time("2026-07-08 12:00:00"):  # 5 days before the new expiry
        assert run(engine, sender)["sent"] == 1
    assert [r["expires_on"] for r in ledger_rows(engine)] == [
        TODAY + timedelta(days=3),
        TODAY + timedelta(days=33),
    ]


@freeze_time("2026-06-10 12:00:00")
def test_opted_out_invalid_and_cancelled_get_no_text(
    engine: Engine, sender: Sender, provider: RecordingProvider
) -> None:
    from app.services.orgs import set_opt_out

    org = make_org(engine, now=utcnow())
    add_subscription(engine, org, expires_on=TODAY + timedelta(days=3), phone="+12025550111")
    add_subscription(engine, org, expires_on=TODAY + timedelta(days=3), phone="12345")
    add_subscription(
        engine, org, expires_on=TODAY + timedelta(days=3), phone="+12025550113", status="cancelled"
    )
    add_subscription(engine, org, expires_on=TODAY + timedelta(days=3), phone="+12025550114")
    with engine.begin() as conn:
        set_opt_out(conn, "acme", "(202) 555-0111", opted_out=True, now=utcnow())
    result = run(engine, sender)
    assert result["sent"] == 1 and result["skipped"] == 2
    reasons = sorted((r["status"], r["reason"]) for r in ledger_rows(engine))
    assert reasons == [("sent", None), ("skipped", "invalid_phone"), ("skipped", "opted_out")]
    assert [to for to, _, _ in provider.sent] == ["+12025550114"]


def test_organizations_on_both_sides_of_utc_get_their_own_day(
    engine: Engine, sender: Sender, provider: RecordingProvider
) -> None:
    with freeze_time("2026-06-10 20:00:00"):  # 08:00 on June 11 in Auckland, 13:00 June 10 in LA
        nz = make_org(engine, "kiwi", tz="Pacific/Auckland", now=utcnow())
        la = make_org(engine, "west", tz="America/Los_Angeles", now=utcnow())
        add_subscription(engine, nz, expires_on=date(2026, 6, 14), phone="+12025550121")
        add_subscription(engine, la, expires_on=date(2026, 6, 14), phone="+12025550122")
        summary = runner.run_day(engine, sender)
    assert summary.dates == {"kiwi": "2026-06-11", "west": "2026-06-10"}
    by_phone = {
        r["phone"]: (r["local_date"], r["days_left"], r["lead_days"]) for r in ledger_rows(engine)
    }
    assert by_phone["+12025550121"] == (date(2026, 6, 11), 3, 3)
    assert by_phone["+12025550122"] == (date(2026, 6, 10), 4, 5)


def test_outside_the_window_texts_are_held_then_sent_with_fresh_text(
    engine: Engine, sender: Sender, provider: RecordingProvider
) -> None:
    with freeze_time("2026-06-10 02:00:00"):  # 22:00 on June 9 in New York: window closed
        org = make_org(engine, "ny", tz="America/New_York", now=utcnow())
        add_subscription(engine, org, expires_on=date(2026, 6, 14))  # 5 days left on June 9
        result = run(engine, sender)
        assert result["held"] == 1 and result["sent"] == 0 and provider.sent == []
        (row,) = ledger_rows(engine)
        assert row["status"] == "pending" and row["next_attempt_at"] == datetime.fromisoformat(
            "2026-06-10T12:00:00+00:00"
        )
    with freeze_time("2026-06-10 12:30:00"):  # 08:30 June 10: window open, now 4 days left
        result = run(engine, sender)
        assert result["sent"] == 1
    (row,) = ledger_rows(engine)
    assert row["days_left"] == 4 and "in 4 days" in provider.sent[0][1]


def test_a_held_text_overtaken_by_a_nearer_lead_gives_way_to_it(
    engine: Engine, sender: Sender, provider: RecordingProvider
) -> None:
    with freeze_time("2026-06-10 02:00:00"):
        org = make_org(engine, "ny", tz="America/New_York", now=utcnow())
        add_subscription(engine, org, expires_on=date(2026, 6, 14))
        run(engine, sender)  # lead 5 held
    with freeze_time("2026-06-11 14:00:00"):  # June 11: 3 days left, lead 3 is due
        run(engine, sender)
    rows = {r["lead_days"]: r for r in ledger_rows(engine)}
    assert rows[5]["status"] == "skipped" and "superseded" in str(rows[5]["reason"])
    assert rows[3]["status"] == "sent"
    assert len(provider.sent) == 1 and "in 3 days" in provider.sent[0][1]


def _raise(exc: Exception) -> object:
    def step() -> None:
        raise exc

    return step


@freeze_time("2026-06-10 12:00:00")
def test_transient_errors_retry_with_backoff_until_sent(
    engine: Engine, sender: Sender, provider: RecordingProvider
) -> None:
    org = make_org(engine, now=utcnow())
    add_subscription(engine, org, expires_on=TODAY + timedelta(days=3), phone="+12025550131")
    provider.script["+12025550131"] = [_raise(TransientError("busy", code="20429"))] * 2  # type: ignore[list-item]
    result = run(engine, sender)
    assert result["retrying"] == 1 and provider.sent == []
    (row,) = ledger_rows(engine)
    assert row["status"] == "pending" and row["attempts"] == 1 and row["error_code"] == "20429"
    assert row["next_attempt_at"] > utcnow()  # type: ignore[operator]
    for minutes in (5, 10):
        with freeze_time(f"2026-06-10 12:{minutes:02d}:00"):
            run(engine, sender)
    (row,) = ledger_rows(engine)
    assert row["status"] == "sent" and row["attempts"] == 3 and len(provider.sent) == 1


@freeze_time("2026-06-10 12:00:00")
def test_retries_exhausted_fail_with_the_last_error(
    engine: Engine, sender: Sender, provider: RecordingProvider
) -> None:
    org = make_org(engine, now=utcnow())
    add_subscription(engine, org, expires_on=TODAY + timedelta(days=3), phone="+12025550132")
    provider.script["+12025550132"] = [
        _raise(TransientError(f"down {i}", code="503")) for i in range(5)
    ]  # type: ignore[misc]
    for minutes in (0, 10, 30, 59):
        with freeze_time(f"2026-06-10 12:{minutes:02d}:00"):
            run(engine, sender)
    (row,) = ledger_rows(engine)
    assert (
        row["status"] == "failed" and row["attempts"] == 3 and row["reason"] == "retries_exhausted"
    )
    assert row["error_message"] == "down 2" and provider.sent == []


@freeze_time("2026-06-10 12:00:00")
def test_permanent_error_fails_at_once_and_unsubscribed_opts_out(
    engine: Engine, sender: Sender, provider: RecordingProvider
) -> None:
    org = make_org(engine, now=utcnow())
    add_subscription(engine, org, expires_on=TODAY + timedelta(days=3), phone="+12025550141")
    provider.script["+12025550141"] = [
        _raise(PermanentError("unsubscribed", code="21610", opted_out=True))  # type: ignore[list-item]
    ]
    assert run(engine, sender)["failed"] == 1
    (row,) = ledger_rows(engine)
    assert (row["status"], row["attempts"], row["error_code"]) == ("failed", 1, "21610")
    run(engine, sender)  # never retried
    with freeze_time("2026-06-11 12:00:00"):
        # A second subscription of the same person: the opt-out holds, no text is tried.
        add_subscription(engine, org, expires_on=TODAY + timedelta(days=4), phone="+12025550141")
        assert run(engine, sender)["skipped"] == 1
    assert [(r["status"], r["reason"]) for r in ledger_rows(engine)][1] == ("skipped", "opted_out")
    assert provider.sent == []


@freeze_time("2026-06-10 12:00:00")
def test_unknown_outcome_is_never_resent_blindly(
    engine: Engine, sender: Sender, provider: RecordingProvider
) -> None:
    org = make_org(engine, now=utcnow())
    add_subscription(engine, org, expires_on=TODAY + timedelta(days=3), phone="+12025550151")
    provider.script["+12025550151"] = [_raise(UnknownOutcomeError("read timeout"))]  # type: ignore[list-item]
    assert run(engine, sender)["unknown"] == 1
    run(engine, sender)
    (row,) = ledger_rows(engine)
    assert row["status"] == "unknown" and row["attempts"] == 1 and provider.sent == []


@freeze_time("2026-06-10 12:00:00")
def test_a_template_that_fails_for_a_row_gives_it_the_built_in_wording(
    engine: Engine, sender: Sender, provider: RecordingProvider
) -> None:
    org = make_org(engine, now=utcnow())
    add_subscription(engine, org, expires_on=TODAY + timedelta(days=3), phone="+12025550161")
    add_subscription(engine, org, expires_on=TODAY + timedelta(days=5), phone="+12025550162")
    # A stored template that divides by days_left - 3 breaks only for the 3-day row.
    with engine.begin() as conn:
        conn.execute(delete(Template))
        conn.execute(
            insert(Template).values(
                org_id=org,
                lead_days=3,
                body="{{ 10 // (days_left - 3) }} left",
                updated_at=utcnow(),
            )
        )
    result = run(engine, sender)
    assert result["sent"] == 2 and result["failed"] == 0
    by_lead = {r["lead_days"]: r for r in ledger_rows(engine)}
    assert "ZeroDivisionError" in str(by_lead[3]["template_fallback"])
    assert str(by_lead[3]["body"]).startswith("Hi Pat, your Acme Fiber plan expires in 3 days")
    assert str(by_lead[5]["body"]).startswith("Hi Pat") and by_lead[5]["template_fallback"] is None


@freeze_time("2026-06-10 12:00:00")
def test_dry_run_writes_nothing(engine: Engine, provider: RecordingProvider) -> None:
    org = make_org(engine, now=utcnow())
    add_subscription(engine, org, expires_on=TODAY + timedelta(days=3))
    summary = runner.dry_run(engine, now=utcnow())
    assert summary.plan.planned == 1 and len(summary.would_send) == 1
    assert "in 3 days" in summary.would_send[0]["body"]
    assert ledger_rows(engine) == [] and provider.sent == []


@freeze_time("2026-06-10 12:00:00")
def test_a_date_other_than_today_only_previews(
    engine: Engine, sender: Sender, provider: RecordingProvider
) -> None:
    org = make_org(engine, now=utcnow())
    add_subscription(engine, org, expires_on=date(2026, 7, 1))
    summary = runner.run_day(engine, sender, on_date=date(2026, 6, 28))
    assert summary.send.sent == 0 and summary.previewed == {"acme": "2026-06-10"}
    assert [(w["days_left"], w["lead_days"]) for w in summary.would_send] == [(3, 3)]
    assert ledger_rows(engine) == [] and provider.sent == []
    assert run(engine, sender, on_date=TODAY)["sent"] == 0  # nothing due today: a plain run


def _thirty_texts_for_one_sender_at_20_a_second(
    engine: Engine,
) -> tuple[RecordingProvider, Sender, list[float]]:
    """30 texts due now for one sender at 20/s, a sender that waits 0.5 s at most for its
    slots, and the instants the provider got each text."""
    import time

    from app.services.ratelimit import LocalRateLimiter

    today = utcnow().date()
    org = make_org(
        engine, now=utcnow(), send_window="00:00-00:00", sender="+12025550999", rate=20.0
    )
    for i in range(30):
        add_subscription(
            engine, org, expires_on=today + timedelta(days=3), phone=f"+1202555{1000 + i}"
        )
    stamps: list[float] = []

    class Timed(RecordingProvider):
        def send(
            self, to: str, body: str, sender: str | None, *, valid_for: int | None = None
        ) -> str:
            stamps.append(time.monotonic())
            return super().send(to, body, sender)

    provider = Timed()
    s = make_sender(engine, provider)
    s.limiter, s.max_rate_wait = LocalRateLimiter(), 0.5
    return provider, s, stamps


def test_the_sender_rate_limit_spaces_texts_and_defers_what_does_not_fit(engine: Engine) -> None:
    """20 texts a second for one sender (booked at RATE_MARGIN: 19/s) and 0.5 s to send them: the
    slots that fit go out spaced, the rest wait in the ledger with their attempt given back."""
    provider, s, stamps = _thirty_texts_for_one_sender_at_20_a_second(engine)
    with engine.begin() as conn:
        plan_day(conn, now=utcnow(), orgs=load_orgs(conn))
    with engine.connect() as conn:
        ids = ledger.due_ids(conn, now=utcnow())
    try:
        result = s.send_ids(ids)
    finally:
        s.close()
    booked = 20 * RATE_MARGIN
    # 0.5 s x 19/s, give or take the edges: a lane stops booking once it has waited 0.5 s for
    # slots, so the last group it booked (BOOK_AHEAD of slots) may end past it, and the time its
    # claims take is not counted as waiting.
    assert 6 <= result.sent <= int(booked * (0.5 + BOOK_AHEAD)) + 3
    rows = ledger_rows(engine)
    waiting = [r for r in rows if r["status"] == "pending"]
    assert len(waiting) == 30 - result.sent and {r["attempts"] for r in waiting} == {0}
    assert {r["reason"] for r in waiting} == {"deferred"}
    assert all(r["next_attempt_at"] > utcnow() for r in waiting)  # type: ignore[operator]
    stamps.sort()
    # Spread at the booked rate, each text at most 0.1 s after its slot: never a burst.
    assert stamps[-1] - stamps[0] >= (len(stamps) - 1) / booked - 0.1
    assert max(sum(1 for u in stamps if t <= u < t + 0.25) for t in stamps) <= 0.25 * 20 + 1
    assert provider.sent[0][2] == "+12025550999"


def test_a_manual_run_waits_for_its_senders_slots_until_every_text_is_out(
    engine: Engine,
) -> None:
    """R6, issue 13 case 2: more texts than a sender's rate lets out at once: the run returns
    only when all are sent (it used to stop with the deferred ones still pending)."""
    provider, s, stamps = _thirty_texts_for_one_sender_at_20_a_second(engine)
    progress: list[tuple[int, int]] = []
    try:
        summary = runner.run_day(
            engine, s, on_progress=lambda report, total: progress.append((report.sent, total))
        )
    finally:
        s.close()
    assert summary.send.sent == 30 and len(provider.sent) == 30
    assert [r["status"] for r in ledger_rows(engine)] == ["sent"] * 30
    assert progress[-1] == (30, 30) and progress[0][1] == 30
    assert max(sum(1 for u in stamps if t <= u < t + 1.0) for t in stamps) <= 20


def test_a_process_slower_than_its_senders_defers_nothing(engine: Engine) -> None:
    """Ten senders allow far more than a process with two sends in flight of 40 ms each
    (50/s) can do: 60 texts take over a second, twice the allowed wait for slots, yet none goes
    back to the ledger: only a sender's rate defers a text, never the process's own
    capacity."""
    import time

    from app.services.ratelimit import LocalRateLimiter

    today = utcnow().date()
    for k in range(10):
        org = make_org(
            engine, f"org{k}", now=utcnow(), send_window="00:00-00:00", sender=f"+1202555090{k}"
        )
        for i in range(6):
            phone = f"+1202555{k}{i:03d}"
            add_subscription(engine, org, expires_on=today + timedelta(days=3), phone=phone)

    class Slow(RecordingProvider):
        def send(
            self, to: str, body: str, sender: str | None, *, valid_for: int | None = None
        ) -> str:
            time.sleep(0.04)
            return super().send(to, body, sender)

    provider = Slow()
    s = make_sender(engine, provider, send_concurrency=2, rate_per_second=100.0)
    s.limiter, s.max_rate_wait = LocalRateLimiter(), 0.5
    started = time.monotonic()
    try:
        result = run(engine, s)
    finally:
        s.close()
    assert result["sent"] == 60
    assert time.monotonic() - started > 1.0  # the process, not the senders, set the pace
    assert len({to for to, _, _ in provider.sent}) == 60


def test_a_stalled_sender_books_fresh_slots_instead_of_bursting(engine: Engine) -> None:
    """Texts whose slots passed while the process stalled do not go out back to back."""
    import time

    from app.services.ratelimit import LocalRateLimiter

    today = utcnow().date()
    org = make_org(engine, now=utcnow(), send_window="00:00-00:00", sender="+12025550998")
    for i in range(8):
        phone = f"+1202555{2000 + i}"
        add_subscription(engine, org, expires_on=today + timedelta(days=3), phone=phone)
    stamps: list[float] = []

    class Stalling(RecordingProvider):
        def send(
            self, to: str, body: str, sender: str | None, *, valid_for: int | None = None
        ) -> str:
            stamps.append(time.monotonic())
            if len(stamps) == 1:
                time.sleep(0.4)  # the process stalls: the next slots all pass
            return super().send(to, body, sender)

    s = make_sender(engine, Stalling(), send_concurrency=1, rate_per_second=20.0)
    s.limiter = LocalRateLimiter()
    try:
        assert run(engine, s)["sent"] == 8
    finally:
        s.close()
    # The slots that passed during the stall are not used at once afterwards: at 20/s no
    # quarter of a second holds more than 5 texts (+1 at its edge).
    times = sorted(stamps)
    assert max(sum(1 for u in times if t <= u < t + 0.25) for t in times) <= 6


@freeze_time("2026-06-10 12:00:00")
def test_a_day_planned_page_by_page_hands_on_each_committed_page_taking_turns(
    engine: Engine,
) -> None:
    """The daily task sends a page while the next is rendered: each page must already be in the
    ledger for every other connection, and mix the organizations, when it is handed on."""
    orgs = [make_org(engine, slug, now=utcnow()) for slug in ("north", "south", "west")]
    for k, org in enumerate(orgs):  # each organization's customers imported as one block
        for i in range(6):
            add_subscription(
                engine, org, expires_on=TODAY + timedelta(days=3), phone=f"+1202555{k}{i:03d}"
            )
    add_subscription(engine, orgs[0], expires_on=TODAY + timedelta(days=3), phone="12")
    pages: list[tuple[list[int], int]] = []

    def on_page(ids: list[int]) -> None:
        with engine.connect() as other:
            org_of = dict(
                other.execute(
                    select(Reminder.id, Reminder.org_id).where(
                        Reminder.id.in_(ids), Reminder.status == "pending"
                    )
                ).all()
            )
            in_ledger = other.execute(select(func.count()).select_from(Reminder)).scalar_one()
        pages.append(([org_of[i] for i in ids], in_ledger))

    with engine.connect() as conn:
        report = plan_day(conn, now=utcnow(), orgs=load_orgs(conn), page=6, on_page=on_page)
        conn.commit()
    assert (report.rendered, report.skipped) == (18, 1)
    # Three pages of six pending rows, two of each organization in turn; the invalid number's
    # row (the seventh of north's turns) is planned as skipped and handed to no one.
    assert [orgs_in_page for orgs_in_page, _ in pages] == [orgs * 2] * 3
    assert [in_ledger for _, in_ledger in pages] == [6, 12, 18]
    assert len(ledger_rows(engine)) == 19


@pytest.mark.parametrize("render", [False, True], ids=["daily-run", "rendered"])
def test_a_day_of_more_organizations_than_one_statement_takes_plans_each_once(
    engine: Engine, render: bool
) -> None:
    """1,000 organizations (more than a driver takes in one IN list), half of them already on
    tomorrow: every one's due text is planned exactly once, and planning again adds nothing."""
    now = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
    n = 1000
    with engine.begin() as conn:
        conn.execute(
            insert(Organization),
            [
                {
                    "slug": f"org{i}",
                    "name": f"Org {i}",
                    "timezone": "Pacific/Auckland" if i % 2 else "UTC",
                    "send_time": time_of_day(9),
                    "window_start": time_of_day(0),
                    "window_end": time_of_day(0),
                    "lead_days": "3",
                    "country": "US",
                    "active": True,
                    "created_at": now,
                }
                for i in range(n)
            ],
        )
        org_ids = list(conn.execute(select(Organization.id).order_by(Organization.id)).scalars())
        number = {"phone": "+12025550100", "phone_e164": "+12025550100"}
        conn.execute(
            insert(Customer),
            [{"org_id": o, "external_id": "c", "name": "Pat", **number} for o in org_ids],
        )
        customer_of = dict(conn.execute(select(Customer.org_id, Customer.id)).all())
        conn.execute(
            insert(Subscription),
            [
                {
                    "org_id": o,
                    "customer_id": customer_of[o],
                    "external_id": "s",
                    "plan": "Fiber",
                    "expires_on": TODAY + timedelta(days=3),
                    "status": "active",
                }
                for o in org_ids
            ],
        )
    for expected in (n, 0):
        with engine.begin() as conn:
            report = plan_day(conn, now=now, orgs=load_orgs(conn), render=render)
        assert report.planned == expected
    with engine.connect() as conn:
        planned = conn.execute(select(Reminder.org_id, Reminder.local_date)).all()
    tomorrow = TODAY + timedelta(days=1)
    assert sorted(planned) == [(o, tomorrow if i % 2 else TODAY) for i, o in enumerate(org_ids)]

"""The API's gauges against a ledger whose every row the test made: each value is what a plain
query of that organization's rows says (per organization, the way an operator would check)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, func, insert, select, update

from app.db.models import DailyRun, Event, EventDelivery, Organization, Reminder
from app.domain.status import Status
from app.metrics import ledger as ledger_metrics
from app.services import events as event_service
from app.settings import Settings
from tests.factories import make_org
from tests.ledger_rows import make_row
from tests.metrics.exposition import Labels, Samples, labels, samples

# 11:30 UTC on 10 March: 00:30 on the 11th in Auckland (NZDT, UTC+13).
NOW = datetime(2030, 3, 10, 11, 30, tzinfo=UTC)
ZONES = {"acme": "UTC", "kiwi": "Pacific/Auckland", "gone": "UTC"}


def scrape(engine: Engine, now: datetime = NOW) -> Samples:
    return samples(ledger_metrics.exposition(ledger_metrics.registry(engine, lambda: now)).decode())


def org(slug: str) -> Labels:
    return labels(organization=slug)


def today_of(slug: str) -> date:
    return NOW.astimezone(ZoneInfo(ZONES[slug])).date()


def build_ledger(engine: Engine) -> dict[str, int]:
    ids = {
        slug: make_org(engine, slug, tz=tz, now=NOW - timedelta(days=30), send_window="00:00-00:00")
        for slug, tz in ZONES.items()
    }
    acme, kiwi, gone = ids["acme"], ids["kiwi"], ids["gone"]
    t_acme, t_kiwi = today_of("acme"), today_of("kiwi")
    ago = lambda minutes: NOW - timedelta(minutes=minutes)  # noqa: E731
    for status, n in (("sent", 3), ("failed", 1), ("skipped", 2), ("sending", 1)):
        for _ in range(n):
            make_row(engine, acme, status=status, today=t_acme, claimed_at=ago(5))
    # acme: pending due for 40 min, one due for 10, one held until later (not due)
    make_row(engine, acme, today=t_acme, next_attempt_at=ago(40))
    make_row(engine, acme, today=t_acme, next_attempt_at=ago(10))
    make_row(engine, acme, today=t_acme, next_attempt_at=NOW + timedelta(hours=2))
    # acme: yesterday's rows are not today's, but an unknown one of them still counts
    make_row(engine, acme, status="sent", today=t_acme - timedelta(days=1))
    make_row(engine, acme, status="unknown", today=t_acme - timedelta(days=1), claimed_at=ago(50))
    make_row(engine, acme, status="unknown", today=t_acme, claimed_at=ago(20))
    # kiwi: its today is acme's tomorrow
    for _ in range(2):
        make_row(engine, kiwi, status="sent", today=t_kiwi)
    make_row(engine, kiwi, status="sent", today=t_acme)  # its yesterday
    make_row(engine, kiwi, today=t_kiwi, next_attempt_at=None)  # due since it was made
    # gone: disabled, one unknown row left from before
    make_row(engine, gone, status="unknown", today=t_acme - timedelta(days=2), claimed_at=ago(90))
    with engine.begin() as conn:
        conn.execute(update(Organization).where(Organization.id == gone).values(active=False))
        conn.execute(
            update(Reminder)
            .where(Reminder.org_id == kiwi, Reminder.next_attempt_at.is_(None))
            .values(created_at=ago(3))
        )
        conn.execute(
            insert(DailyRun),
            [
                # acme: yesterday finished, today started at 09:00:30
                run(acme, t_acme - timedelta(days=1), "finished", ago(26 * 60), ago(20 * 60)),
                run(acme, t_acme, "planned", ago(149.5), None),
                run(kiwi, t_kiwi - timedelta(days=1), "finished", ago(16 * 60), ago(15 * 60)),
            ],
        )
    return ids


def run(
    org_id: int, day: date, status: str, started: datetime, finished: datetime | None
) -> dict[str, object]:
    return {
        "org_id": org_id,
        "local_date": day,
        "status": status,
        "planned": 0,
        "started_at": started,
        "finished_at": finished,
    }


def expected(engine: Engine, slug: str, org_id: int) -> dict[str, float]:
    """What the ledger says of one organization, one plain query at a time."""
    day = today_of(slug)
    with engine.connect() as conn:
        counts = dict(
            conn.execute(
                select(Reminder.status, func.count())
                .where(Reminder.org_id == org_id, Reminder.local_date == day)
                .group_by(Reminder.status)
            ).all()
        )
        due = [
            r.next_attempt_at or r.created_at
            for r in conn.execute(
                select(Reminder.next_attempt_at, Reminder.created_at).where(
                    Reminder.org_id == org_id, Reminder.status == "pending"
                )
            )
            if (r.next_attempt_at or r.created_at) <= NOW
        ]
        unknown = list(
            conn.execute(
                select(Reminder.claimed_at).where(
                    Reminder.org_id == org_id, Reminder.status == "unknown"
                )
            ).scalars()
        )
        runs = conn.execute(
            select(DailyRun.started_at, DailyRun.finished_at).where(DailyRun.org_id == org_id)
        ).all()
    values = {f"rows:{s.value}": float(counts.get(s.value, 0)) for s in Status}
    send_at = datetime.combine(day, time(9, 0), tzinfo=ZoneInfo(ZONES[slug]))
    values.update(
        send_time=send_at.timestamp(),
        started=max((r.started_at.timestamp() for r in runs), default=0.0),
        completed=max((r.finished_at.timestamp() for r in runs if r.finished_at), default=0.0),
        due_age=(NOW - min(due)).total_seconds() if due else 0.0,
        unknown=float(len(unknown)),
        unknown_age=(NOW - min(unknown)).total_seconds() if unknown else 0.0,
    )
    return values


def scraped(found: Samples, slug: str) -> dict[str, float]:
    got = {
        f"rows:{s.value}": found[
            ("reminders_ledger_rows", labels(organization=slug, status=s.value))
        ]
        for s in Status
    }
    for key, name in (
        ("send_time", "reminders_day_send_time_timestamp_seconds"),
        ("started", "reminders_day_started_timestamp_seconds"),
        ("completed", "reminders_day_completed_timestamp_seconds"),
        ("due_age", "reminders_due_oldest_age_seconds"),
        ("unknown", "reminders_unknown_rows"),
        ("unknown_age", "reminders_unknown_oldest_age_seconds"),
    ):
        got[key] = found[(name, org(slug))]
    return got


@pytest.mark.postgres
def test_gauges_equal_what_the_ledger_says(pg_engine: Engine) -> None:
    ids = build_ledger(pg_engine)
    samples = scrape(pg_engine)
    for slug in ("acme", "kiwi"):
        assert scraped(samples, slug) == pytest.approx(expected(pg_engine, slug, ids[slug]))
    # The same facts, written out: the test's own ledger, not only the reference queries.
    acme = scraped(samples, "acme")
    assert (acme["rows:sent"], acme["rows:pending"], acme["rows:unknown"]) == (3, 3, 1)
    assert (acme["due_age"], acme["unknown"], acme["unknown_age"]) == (2400, 2, 3000)
    assert acme["send_time"] == datetime(2030, 3, 10, 9, 0, tzinfo=UTC).timestamp()
    assert acme["started"] > acme["send_time"] > acme["completed"] > 0
    kiwi = scraped(samples, "kiwi")
    assert (kiwi["rows:sent"], kiwi["rows:pending"], kiwi["due_age"]) == (2, 1, 180)
    assert kiwi["send_time"] == datetime(2030, 3, 10, 20, 0, tzinfo=UTC).timestamp()
    assert kiwi["started"] < kiwi["send_time"]  # its today has not started: 00:30 there
    # A disabled organization: no day, but what it left waiting still shows.
    assert ("reminders_ledger_rows", (("organization", "gone"), ("status", "sent"))) not in samples
    assert ("reminders_day_send_time_timestamp_seconds", org("gone")) not in samples
    assert samples[("reminders_unknown_rows", org("gone"))] == 1
    assert samples[("reminders_unknown_oldest_age_seconds", org("gone"))] == 90 * 60


def test_the_embedded_database_gives_the_same_answer(sqlite_engine: Engine) -> None:
    ids = build_ledger(sqlite_engine)
    samples = scrape(sqlite_engine)
    for slug in ("acme", "kiwi"):
        assert scraped(samples, slug) == pytest.approx(expected(sqlite_engine, slug, ids[slug]))


@pytest.mark.postgres
def test_an_empty_ledger_scrapes_zeros(pg_engine: Engine) -> None:
    make_org(pg_engine, "acme", now=NOW)
    samples = scrape(pg_engine)
    assert samples[("reminders_ledger_rows", (("organization", "acme"), ("status", "sent")))] == 0
    assert samples[("reminders_day_started_timestamp_seconds", org("acme"))] == 0
    assert samples[("reminders_unknown_oldest_age_seconds", org("acme"))] == 0
    assert ("reminders_ledger_scrape_seconds", ()) in samples


def test_event_deliveries_waiting_and_dead_are_counted_per_organization(engine: Engine) -> None:
    """An operator's view of the outbox: what waits (and since when), what was given up."""
    make_org(engine, "acme", now=NOW, send_window="00:00-00:00")
    make_org(engine, "kiwi", now=NOW, send_window="00:00-00:00")
    with engine.begin() as conn:
        endpoint = event_service.add_endpoint(
            conn,
            "acme",
            "http://127.0.0.1:9/x",
            types=None,
            settings=Settings(events_allow_private=True),
            now=NOW,
        ).id
        org_id = conn.execute(select(Organization.id).where(Organization.slug == "acme")).scalar()
        for i, (status, due) in enumerate(
            (
                ("pending", NOW - timedelta(minutes=25)),
                ("pending", NOW),
                ("dead", NOW),
                ("delivered", NOW - timedelta(hours=3)),
            )
        ):
            pk = conn.execute(
                insert(Event)
                .values(
                    event_id=f"evt_{i}",
                    org_id=org_id,
                    type="optout.created",
                    payload="{}",
                    created_at=due,
                )
                .returning(Event.id)
            ).scalar_one()
            conn.execute(
                insert(EventDelivery).values(
                    event_pk=pk,
                    endpoint_id=endpoint,
                    status=status,
                    attempts=1,
                    first_due_at=due,
                    next_attempt_at=due,
                )
            )
    found = scrape(engine)
    assert found[("reminders_events_waiting", org("acme"))] == 2
    assert found[("reminders_events_oldest_waiting_age_seconds", org("acme"))] == 25 * 60
    assert found[("reminders_events_dead", org("acme"))] == 1
    assert found[("reminders_events_waiting", org("kiwi"))] == 0
    assert found[("reminders_events_oldest_waiting_age_seconds", org("kiwi"))] == 0


def test_a_provider_accounts_open_circuit_is_scraped_with_when_it_opened(engine: Engine) -> None:
    """A provider failing for every number keeps texts waiting: the gauge says since when, so
    an alert can tell an outage from a quiet day; it drops to 0 once the circuit closes."""
    from app.db import ledger

    opened = NOW - timedelta(minutes=12)
    with engine.begin() as conn:
        ledger.save_circuit(
            conn, account="twilio:AC1", opened_at=opened, failures=9, numbers=7, now=opened
        )
        ledger.save_circuit(
            conn, account="twilio:AC2", opened_at=None, failures=0, numbers=0, now=opened
        )
    name = "reminders_provider_circuit_open_since_timestamp_seconds"
    samples = scrape(engine)
    assert samples[(name, labels(account="twilio:AC1"))] == opened.timestamp()
    assert samples[(name, labels(account="twilio:AC2"))] == 0
    with engine.begin() as conn:
        ledger.save_circuit(
            conn, account="twilio:AC1", opened_at=None, failures=0, numbers=0, now=NOW
        )
    assert scrape(engine)[(name, labels(account="twilio:AC1"))] == 0

"""Beat's decisions, with the clock frozen: whose day starts when, once; what the sweeper takes."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import Connection, Engine, func, select, update

from app.db import ledger
from app.db.models import DailyRun, Reminder
from app.domain.planning import utcnow
from app.services import dispatch
from app.services.engine import load_orgs, plan_day
from tests.factories import add_subscription, make_org

pytestmark = pytest.mark.postgres


def _starts(engine: Engine) -> list[tuple[str, date]]:
    with engine.begin() as conn:
        return [(s.slug, s.local_date) for s in dispatch.start_due_days(conn, now=utcnow())]


def _runs(engine: Engine) -> list[tuple[int, date, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(DailyRun.org_id, DailyRun.local_date, DailyRun.status).order_by(DailyRun.id)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


def _take(
    conn: Connection,
    *,
    now: datetime,
    lease_seconds: float | None = None,
    org_ids: list[int] | None = None,
    limit: int | None = None,
) -> list[int]:
    """What a hand-over takes: the due rows without a message, marked as handed over."""
    lost_before = None if lease_seconds is None else now - timedelta(seconds=lease_seconds)
    order = dispatch.due_order(conn, now=now, org_ids=org_ids, lost_before=lost_before)
    return sorted(ledger.hand_over(conn, order[:limit], now=now, lost_before=lost_before))


def test_each_organization_starts_at_its_own_local_send_time(pg_engine: Engine) -> None:
    created = datetime(2026, 1, 14, tzinfo=UTC)
    make_org(pg_engine, "auckland", tz="Pacific/Auckland", now=created)  # UTC+13 in January
    make_org(pg_engine, "london", tz="Europe/London", now=created)  # UTC+0
    make_org(pg_engine, "la", tz="America/Los_Angeles", now=created)  # UTC-8
    # 19:59 UTC on the 14th: 09:00 has passed in London and Los Angeles (their 14th), while it is
    # 08:59 on the 15th in Auckland.
    with freeze_time("2026-01-14 19:59:00"):
        assert _starts(pg_engine) == [("london", date(2026, 1, 14)), ("la", date(2026, 1, 14))]
    with freeze_time("2026-01-14 20:00:00"):
        assert _starts(pg_engine) == [("auckland", date(2026, 1, 15))]
        assert _starts(pg_engine) == []  # the next tick starts nothing twice
    with freeze_time("2026-01-15 08:59:59"):
        assert _starts(pg_engine) == []
    with freeze_time("2026-01-15 09:00:00"):
        assert _starts(pg_engine) == [("london", date(2026, 1, 15))]
    with freeze_time("2026-01-15 17:00:00"):
        assert _starts(pg_engine) == [("la", date(2026, 1, 15))]
    # Auckland's next day starts 24 hours after its last one.
    with freeze_time("2026-01-15 19:59:59"):
        assert _starts(pg_engine) == []
    with freeze_time("2026-01-15 20:00:00"):
        assert _starts(pg_engine) == [("auckland", date(2026, 1, 16))]


def test_spring_forward_send_time_in_the_gap_starts_once_just_after_it(pg_engine: Engine) -> None:
    # New York skips 02:00-03:00 on 2026-03-08; a 02:30 send time falls into the gap.
    make_org(
        pg_engine,
        "ny",
        tz="America/New_York",
        now=utcnow(),
        send_time="02:30",
        send_window="00:00-00:00",
    )
    with freeze_time("2026-03-08 06:59:59"):  # 01:59:59 EST
        assert _starts(pg_engine) == []
    with freeze_time("2026-03-08 07:30:00"):  # 03:30 EDT, the instant 02:30 EST would have been
        assert _starts(pg_engine) == [("ny", date(2026, 3, 8))]
    with freeze_time("2026-03-08 23:00:00"):
        assert _starts(pg_engine) == []
    with freeze_time("2026-03-09 06:30:00"):  # 02:30 EDT the next day
        assert _starts(pg_engine) == [("ny", date(2026, 3, 9))]


def test_fall_back_repeated_hour_starts_the_day_once(pg_engine: Engine) -> None:
    # New York repeats 01:00-02:00 on 2026-11-01; a 01:30 send time happens twice on the clock.
    make_org(
        pg_engine,
        "ny",
        tz="America/New_York",
        now=utcnow(),
        send_time="01:30",
        send_window="00:00-00:00",
    )
    with freeze_time("2026-11-01 05:29:59"):  # 01:29:59 EDT
        assert _starts(pg_engine) == []
    with freeze_time("2026-11-01 05:30:00"):  # 01:30 EDT, the first one
        assert _starts(pg_engine) == [("ny", date(2026, 11, 1))]
    with freeze_time("2026-11-01 06:30:00"):  # 01:30 EST, the second one
        assert _starts(pg_engine) == []
    with freeze_time("2026-11-02 06:30:00"):  # 01:30 EST the next day
        assert _starts(pg_engine) == [("ny", date(2026, 11, 2))]


def test_a_tick_after_a_day_of_downtime_catches_up_once(pg_engine: Engine) -> None:
    org = make_org(pg_engine, "acme", tz="Europe/Paris", now=utcnow())  # UTC+1 in February
    # Expires on the 13th: the 3-day reminder was due on the 10th, the 1-day one on the 12th.
    add_subscription(pg_engine, org, expires_on=date(2026, 2, 13), phone="+12025550101")
    with freeze_time("2026-02-09 08:00:00"):
        assert _starts(pg_engine) == [("acme", date(2026, 2, 9))]
    # Down from the 9th at noon until the 11th at 10:00 local: the 10th never ran.
    with freeze_time("2026-02-11 09:00:00"):
        assert _starts(pg_engine) == [("acme", date(2026, 2, 11))]
        assert _starts(pg_engine) == []
        with pg_engine.begin() as conn:
            plan_day(conn, now=utcnow(), orgs=load_orgs(conn))
    assert [(r[0], r[1]) for r in _runs(pg_engine)] == [
        (org, date(2026, 2, 9)),
        (org, date(2026, 2, 11)),
    ]
    with pg_engine.connect() as conn:
        planned = conn.execute(select(Reminder.lead_days, Reminder.days_left)).all()
    assert planned == [(3, 2)]  # the missed 3-day reminder, saying the real days left


def test_two_beats_ticking_at_once_start_each_day_once(pg_engine: Engine) -> None:
    for i in range(20):
        make_org(pg_engine, f"org{i}", now=utcnow())
    barrier = threading.Barrier(2)
    results: list[list[dispatch.DayStart]] = []

    def tick() -> None:
        with pg_engine.begin() as conn:
            barrier.wait()
            results.append(dispatch.start_due_days(conn, now=datetime(2026, 5, 5, 12, tzinfo=UTC)))

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [s.slug for r in results for s in r]
    assert sorted(won) == sorted(f"org{i}" for i in range(20))
    assert len(_runs(pg_engine)) == 20


def _planned_day(engine: Engine, n: int, *, now: datetime) -> int:
    org = make_org(engine, "acme", now=now, send_window="00:00-00:00")
    for i in range(n):
        add_subscription(
            engine, org, expires_on=now.date() + timedelta(days=3), phone=f"+1202555{i:04d}"
        )
    with engine.begin() as conn:
        plan_day(conn, now=now, orgs=load_orgs(conn))
    return org


@freeze_time("2026-05-05 12:00:00")
def test_the_sweeper_takes_only_rows_without_a_message_in_the_broker(pg_engine: Engine) -> None:
    now = utcnow()
    org = _planned_day(pg_engine, 6, now=now)
    with pg_engine.begin() as conn:
        # The daily run hands over the first four; the other two it never reached (crashed).
        handed = _take(conn, now=now + timedelta(seconds=1), org_ids=[org], limit=4)
    assert len(handed) == 4
    later = now + timedelta(seconds=60)
    with pg_engine.begin() as conn:
        swept = _take(conn, now=later, lease_seconds=900)
    assert len(swept) == 2 and not set(swept) & set(handed)
    with pg_engine.begin() as conn:
        assert _take(conn, now=later, lease_seconds=900) == []
        # A retry falls due: it has no message yet, so the sweeper takes it at once.
        conn.execute(
            update(Reminder)
            .where(Reminder.id == handed[0])
            .values(updated_at=later, next_attempt_at=later + timedelta(seconds=30))
        )
    with pg_engine.begin() as conn:
        assert _take(conn, now=later + timedelta(seconds=29), lease_seconds=900) == []
        assert _take(conn, now=later + timedelta(seconds=31), lease_seconds=900) == [handed[0]]
    # After the lease, a row whose message never turned into a send is presumed lost.
    with pg_engine.begin() as conn:
        lost = _take(conn, now=later + timedelta(seconds=1000), lease_seconds=900)
    assert sorted(lost) == sorted(handed + swept)


def test_two_sweepers_at_once_hand_each_row_over_once(pg_engine: Engine) -> None:
    """Both see the same 40 rows without a message and hand them over in batches of 10, each
    batch committed (as the sweep task does): every row is taken once, by one of them."""
    now = datetime(2026, 5, 5, 12, tzinfo=UTC)
    _planned_day(pg_engine, 40, now=now)
    barrier = threading.Barrier(2)
    results: list[list[int]] = []
    later = now + timedelta(seconds=5)
    lost_before = later - timedelta(seconds=900)

    def sweep() -> None:
        taken: list[int] = []
        with pg_engine.connect() as conn:
            order = dispatch.due_order(conn, now=later, lost_before=lost_before)
            conn.commit()
            barrier.wait()
            for start in range(0, len(order), 10):
                chunk = order[start : start + 10]
                taken += ledger.hand_over(conn, chunk, now=later, lost_before=lost_before)
                conn.commit()
        results.append(taken)

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    taken = results[0] + results[1]
    assert len(taken) == len(set(taken)) == 40


def test_a_day_whose_start_was_lost_is_started_again_and_finishes(pg_engine: Engine) -> None:
    now = datetime(2026, 5, 5, 12, tzinfo=UTC)
    org = _planned_day(pg_engine, 2, now=now)
    with pg_engine.begin() as conn:
        conn.execute(
            DailyRun.__table__.insert().values(
                org_id=org, local_date=now.date(), status="started", planned=0, started_at=now
            )
        )
    with pg_engine.begin() as conn:
        assert (
            dispatch.restart_stalled_days(conn, now=now + timedelta(seconds=60), lease_seconds=900)
            == []
        )
        again = dispatch.restart_stalled_days(
            conn, now=now + timedelta(seconds=901), lease_seconds=900
        )
        assert [(s.slug, s.local_date) for s in again] == [("acme", now.date())]
        assert dispatch.mark_planned(conn, org_days={org: now.date()}) == 1
        assert dispatch.finish_days(conn, now=now) == []  # two rows still pending
        conn.execute(update(Reminder).values(status="sent"))
        finished = dispatch.finish_days(conn, now=now)
    assert [(f.slug, f.counts) for f in finished] == [("acme", {"sent": 2})]
    assert _runs(pg_engine)[0][2] == "finished"


def test_retry_waits_group_rows_by_whole_seconds_never_early(pg_engine: Engine) -> None:
    now = datetime(2026, 5, 5, 12, tzinfo=UTC)
    _planned_day(pg_engine, 4, now=now)
    with pg_engine.begin() as conn:
        ids = list(conn.execute(select(Reminder.id).order_by(Reminder.id)).scalars())
        for rid, wait in zip(ids, (1.5, 1.2, 5000, -2), strict=True):
            conn.execute(
                update(Reminder)
                .where(Reminder.id == rid)
                .values(
                    next_attempt_at=now + timedelta(seconds=wait), reason="retrying", updated_at=now
                )
            )
        waits = dispatch.retry_waits(conn, ids, since=now, now=now, max_wait_seconds=600)
    assert {k: sorted(v) for k, v in waits.items()} == {2: [ids[0], ids[1]], 0: [ids[3]]}


def test_cleanup_keeps_rows_whose_expiry_is_still_ahead(pg_engine: Engine) -> None:
    old = datetime(2025, 1, 1, 12, tzinfo=UTC)
    org = make_org(pg_engine, "acme", now=old, lead_days="60,1")
    add_subscription(pg_engine, org, expires_on=date(2025, 1, 2), phone="+12025550101")
    add_subscription(pg_engine, org, expires_on=date(2025, 3, 2), phone="+12025550102")
    with pg_engine.begin() as conn:
        plan_day(conn, now=old, orgs=load_orgs(conn))
    # 40 days later with 30 days' retention: the 60-day reminder's expiry is still ahead, and
    # deleting it would let planning insert (and send) it again.
    removed = dispatch.cleanup(pg_engine, now=old + timedelta(days=40), retention_days=30)
    with pg_engine.connect() as conn:
        left = conn.execute(select(Reminder.expires_on)).scalars().all()
        total = conn.execute(select(func.count()).select_from(Reminder)).scalar_one()
    assert removed == 1
    assert left == [date(2025, 3, 2)] and total == 1


@freeze_time("2026-05-05 12:00:00")
def test_a_days_batches_take_turns_between_organizations(pg_engine: Engine) -> None:
    """Organizations imported one after another have runs of consecutive ledger ids; the day's
    hand-over still mixes them, so no batch is one organization's (one sender's) alone."""
    now = utcnow()
    orgs = []
    for k, slug in enumerate(("north", "south", "west")):
        org = make_org(pg_engine, slug, now=now, send_window="00:00-00:00")
        orgs.append(org)
        for i in range(4):
            add_subscription(
                pg_engine,
                org,
                expires_on=now.date() + timedelta(days=3),
                phone=f"+1202555{k}{i:03d}",
            )
    with pg_engine.begin() as conn:
        plan_day(conn, now=now, orgs=load_orgs(conn))
        org_of = dict(conn.execute(select(Reminder.id, Reminder.org_id)).all())
        order = dispatch.due_order(conn, now=now, org_ids=orgs)
    assert sorted(order) == sorted(org_of)
    for start in range(0, 12, 3):  # batches of three: one row of each organization
        assert {org_of[i] for i in order[start : start + 3]} == set(orgs)
    with pg_engine.begin() as conn:
        conn.execute(update(Reminder).where(Reminder.id == order[0]).values(status="sent"))
        handed = ledger.hand_over(conn, order[:3], now=now + timedelta(seconds=1))
    assert handed == order[1:3]  # a row no longer pending is not handed over
    with pg_engine.connect() as conn:
        # A day's run hands over only rows without a message in the broker.
        again = dispatch.due_order(conn, now=now + timedelta(seconds=2), org_ids=orgs)
    assert again == order[3:]
    with pg_engine.begin() as conn:
        # Handed over: the sweeper leaves them to their message for the lease.
        swept = _take(conn, now=now + timedelta(seconds=60), lease_seconds=900)
    assert not set(swept) & set(handed) and len(swept) == 9

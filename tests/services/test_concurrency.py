"""Races on real PostgreSQL: the database, not the application, decides who sends."""

from __future__ import annotations

import threading
from datetime import date, timedelta

from freezegun import freeze_time
from sqlalchemy import Engine, insert, select

from app.db import ledger
from app.db.models import Customer, Subscription
from app.domain.planning import utcnow
from app.services import runner
from app.services.sender import Sender
from tests.factories import (
    RecordingProvider,
    add_subscription,
    ledger_rows,
    make_org,
    make_sender,
)

TODAY = date(2026, 6, 10)


def _bulk_subscriptions(engine: Engine, org_id: int, n: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(Customer),
            [
                {
                    "org_id": org_id,
                    "external_id": f"c{i}",
                    "name": f"N{i}",
                    "phone": f"+1202555{i:04d}",
                    "phone_e164": f"+1202555{i:04d}",
                }
                for i in range(n)
            ],
        )
        cust = dict(conn.execute(select(Customer.external_id, Customer.id)).all())
        conn.execute(
            insert(Subscription),
            [
                {
                    "org_id": org_id,
                    "customer_id": cust[f"c{i}"],
                    "external_id": f"s{i}",
                    "plan": "P",
                    "expires_on": TODAY + timedelta(days=1 + i % 5),
                    "status": "active",
                }
                for i in range(n)
            ],
        )


def _run_all(threads: list[threading.Thread], senders: list[Sender]) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in senders:
        s.close()


@freeze_time("2026-06-10 12:00:00")
def test_two_runs_at_the_same_moment_send_each_reminder_once(pg_engine: Engine) -> None:
    org = make_org(pg_engine, now=utcnow())
    _bulk_subscriptions(pg_engine, org, 300)
    provider = RecordingProvider()
    senders = [make_sender(pg_engine, provider, send_concurrency=8) for _ in range(2)]
    barrier = threading.Barrier(2)
    results: list[dict[str, object]] = []

    def go(i: int) -> None:
        barrier.wait()
        results.append(runner.run_day(pg_engine, senders[i], batch_size=50).as_dict())

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    _run_all(threads, senders)
    rows = ledger_rows(pg_engine)
    assert len(rows) == 300 and {r["status"] for r in rows} == {"sent"}
    phones = [to for to, _, _ in provider.sent]
    assert len(phones) == 300 and len(set(phones)) == 300
    assert sum(int(r["planned"]) for r in results) == 300  # type: ignore[call-overload]
    assert sum(int(r["sent"]) for r in results) == 300  # type: ignore[call-overload]


@freeze_time("2026-06-10 12:00:00")
def test_exactly_one_claimer_wins_a_row(pg_engine: Engine) -> None:
    org = make_org(pg_engine, now=utcnow())
    _bulk_subscriptions(pg_engine, org, 5)
    with pg_engine.begin() as conn:
        from app.services.engine import load_orgs, plan_day

        plan_day(conn, now=utcnow(), orgs=load_orgs(conn))
    ids = [int(r["id"]) for r in ledger_rows(pg_engine)]  # type: ignore[call-overload]
    barrier = threading.Barrier(8)
    won: list[list[int]] = []

    def claim() -> None:
        barrier.wait()
        with pg_engine.begin() as conn:
            won.append(ledger.claim(conn, ids, now=utcnow()))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = sorted(i for w in won for i in w)
    assert claimed == sorted(ids)  # each row won exactly once across eight racers
    assert {r["attempts"] for r in ledger_rows(pg_engine)} == {1}


@freeze_time("2026-06-10 12:00:00")
def test_two_workers_take_turns_on_one_senders_rate(pg_engine: Engine) -> None:
    """Two processes sending for one sender at once share its timeline a few slots at a time:
    both send from start to finish (neither waits out the other's whole batch), and no
    one-second window holds more texts than the sender's rate."""
    import time
    from dataclasses import dataclass

    from app.services.engine import load_orgs, plan_day
    from app.services.ratelimit import LocalRateLimiter

    org = make_org(
        pg_engine, now=utcnow(), send_window="00:00-00:00", sender="+12025550999", rate=40.0
    )
    for i in range(60):
        add_subscription(
            pg_engine, org, expires_on=TODAY + timedelta(days=3), phone=f"+1202555{3000 + i}"
        )
    with pg_engine.begin() as conn:
        plan_day(conn, now=utcnow(), orgs=load_orgs(conn))
    ids = [int(r["id"]) for r in ledger_rows(pg_engine)]  # type: ignore[call-overload]
    stamps: list[tuple[int, float]] = []

    @dataclass
    class Timed(RecordingProvider):
        who: int = 0

        def send(
            self, to: str, body: str, sender: str | None, *, valid_for: int | None = None
        ) -> str:
            with self.lock:
                stamps.append((self.who, time.monotonic()))
            return super().send(to, body, sender)

    shared = LocalRateLimiter()  # what Redis is to two processes
    senders = [make_sender(pg_engine, Timed(who=k)) for k in range(2)]
    for s in senders:
        s.limiter = shared
    halves = [ids[:30], ids[30:]]  # each worker holds a whole batch for the one sender
    threads = [
        threading.Thread(target=s.send_ids, args=(half,), kwargs={"ignore_window": True})
        for s, half in zip(senders, halves, strict=True)
    ]
    _run_all(threads, senders)
    assert {r["status"] for r in ledger_rows(pg_engine)} == {"sent"}
    assert len(stamps) == 60
    first = {k: min(t for w, t in stamps if w == k) for k in (0, 1)}
    last = {k: max(t for w, t in stamps if w == k) for k in (0, 1)}
    for k in (0, 1):
        assert first[k] < last[1 - k] - 0.5  # each sends while the other still has a while to go
    times = sorted(t for _, t in stamps)
    assert times[-1] - times[0] >= 59 / 40  # 60 texts at no more than 40 a second
    in_window = max(sum(1 for u in times if t <= u < t + 1.0) for t in times)
    assert in_window <= 40


@freeze_time("2026-06-10 12:00:00")
def test_planning_a_big_day_refreshes_the_ledgers_statistics(pg_engine: Engine) -> None:
    """PostgreSQL must know the day's pending rows exist, or it finds each batch by scanning
    every one of them (see plan.refresh_statistics)."""
    from sqlalchemy import text

    from app.services.engine import load_orgs, plan_day

    org = make_org(pg_engine, now=utcnow())
    _bulk_subscriptions(pg_engine, org, 6000)  # a fifth expire in 3 days, a fifth in 1, ...
    with pg_engine.begin() as conn:
        report = plan_day(conn, now=utcnow(), orgs=load_orgs(conn))
        assert report.planned >= 1000
        estimate = conn.execute(
            text("SELECT reltuples FROM pg_class WHERE relname = 'reminders'")
        ).scalar_one()
    assert estimate == report.planned


@freeze_time("2026-06-10 12:00:00")
def test_one_process_sends_batches_for_different_senders_side_by_side(
    pg_engine: Engine,
) -> None:
    """A slow sender's batch does not hold up another sender's: a process works on both at
    once, each at its own sender's rate (a day of many organizations is not sent one
    organization at a time)."""
    import time

    from app.services.engine import load_orgs, plan_day
    from app.services.ratelimit import LocalRateLimiter

    senders = {"north": "+12025550901", "south": "+12025550902"}
    for slug, number in senders.items():
        org = make_org(
            pg_engine, slug, now=utcnow(), send_window="00:00-00:00", sender=number, rate=10.0
        )
        for i in range(10):
            add_subscription(
                pg_engine, org, expires_on=TODAY + timedelta(days=3), phone=f"+1202556{i:04d}"
            )
    with pg_engine.begin() as conn:
        plan_day(conn, now=utcnow(), orgs=load_orgs(conn))
    rows = ledger_rows(pg_engine)
    stamps: dict[str | None, list[float]] = {}

    class Timed(RecordingProvider):
        def send(
            self, to: str, body: str, sender: str | None, *, valid_for: int | None = None
        ) -> str:
            with self.lock:
                stamps.setdefault(sender, []).append(time.monotonic())
            return super().send(to, body, sender)

    sender = make_sender(pg_engine, Timed())
    sender.limiter = LocalRateLimiter()
    try:
        batches = [
            sender.submit_ids([int(r["id"]) for r in rows if r["sender"] == number])  # type: ignore[call-overload]
            for number in senders.values()
        ]
        reports = [b.result(timeout=30) for b in batches]
    finally:
        sender.close()
    assert [r.sent for r in reports] == [10, 10]
    north, south = (sorted(stamps[n]) for n in senders.values())
    # Ten texts at 9 a second take a second per sender: side by side, not one after the other.
    assert south[0] < north[-1] - 0.5 and north[0] < south[-1] - 0.5
    assert max(north[-1], south[-1]) - min(north[0], south[0]) < 1.6

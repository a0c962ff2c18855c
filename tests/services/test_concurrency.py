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
from tests.factories import RecordingProvider, ledger_rows, make_org, make_sender

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
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in senders:
        s.close()
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

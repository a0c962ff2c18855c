"""Benchmark: plan one day over a million subscriptions on PostgreSQL.

Loads N subscriptions (default 1,000,000) over 1,000 organizations with monthly expiries into a
fresh database (COPY, untimed), plans yesterday so the ledger is in its steady state, then times
today's plan as the daily run makes it: every due row inserted set-based (its text is rendered
when it leaves); with ``--render`` also every body rendered and stored, as the manual run does.
Prints wall time, rows per second and the process's peak memory.

    .venv/bin/python bench/plan_day.py                       # 1,000,000 subscriptions
    .venv/bin/python bench/plan_day.py --subscriptions 100000   # memory should not change
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import uuid
from datetime import UTC, date, datetime, timedelta

import psycopg

from app.db.migrate import upgrade
from app.db.session import dispose_engines, get_engine
from app.services.engine import load_orgs, plan_day

ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TODAY = date(2026, 6, 10)
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo", "Pacific/Auckland"]


def load(url: str, n_subs: int, n_orgs: int) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(url) as conn:
        with conn.cursor().copy(
            "COPY organizations (id, slug, name, timezone, send_time, window_start, window_end,"
            " lead_days, country, active, created_at) FROM STDIN"
        ) as cp:
            for o in range(1, n_orgs + 1):
                cp.write_row(
                    (
                        o,
                        f"org{o}",
                        f"Org {o}",
                        ZONES[o % len(ZONES)],
                        "09:00",
                        "00:00",
                        "00:00",
                        "5,3,1",
                        "US",
                        True,
                        now,
                    )
                )
        with conn.cursor().copy(
            "COPY customers (id, org_id, external_id, name, phone, phone_e164) FROM STDIN"
        ) as cp:
            for i in range(1, n_subs + 1):
                phone = f"+1202{i % 10_000_000:07d}"
                cp.write_row((i, 1 + i % n_orgs, f"c{i}", f"Customer {i}", phone, phone))
        with conn.cursor().copy(
            "COPY subscriptions (id, org_id, customer_id, external_id, plan, expires_on, amount,"
            " currency, status) FROM STDIN"
        ) as cp:
            for i in range(1, n_subs + 1):
                # Monthly plans: expiries spread evenly over the next 30 days.
                expires = TODAY + timedelta(days=i % 30)
                cp.write_row(
                    (i, 1 + i % n_orgs, i, f"s{i}", "Fiber 500", expires, "49.90", "USD", "active")
                )
        for table in ("organizations", "customers", "subscriptions"):
            conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT max(id) FROM {table}))"
            )
        conn.execute("ANALYZE")


def timed_plan(url: str, day: date, render: bool) -> tuple[float, int, int]:
    engine = get_engine(url)
    now = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
    start = time.perf_counter()
    with engine.begin() as conn:
        orgs = load_orgs(conn)
        report = plan_day(conn, now=now, orgs=orgs, on_date=day, render=render)
    return time.perf_counter() - start, report.planned, report.rendered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscriptions", type=int, default=1_000_000)
    parser.add_argument("--orgs", type=int, default=1_000)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--render",
        action="store_true",
        help="render every body while planning, as the manual run does (the daily run plans "
        "without: texts are rendered as they leave)",
    )
    args = parser.parse_args()

    name = f"bench_plan_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(ADMIN, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN.rsplit("/", 1)[0] + "/" + name
    try:
        upgrade(url)
        t0 = time.perf_counter()
        load(url, args.subscriptions, args.orgs)
        print(
            f"loaded {args.subscriptions:,} subscriptions over {args.orgs:,} organizations "
            f"in {time.perf_counter() - t0:.1f}s (COPY, not part of the plan)"
        )
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        wall, planned, rendered = timed_plan(url, TODAY - timedelta(days=1), args.render)
        print(
            f"cold plan (empty ledger, catch-up of every lead): {planned:,} rows, "
            f"{rendered:,} rendered in {wall:.2f}s = {planned / wall:,.0f} rows/s"
        )
        wall, planned, rendered = timed_plan(url, TODAY, args.render)
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(
            f"daily plan (steady state): {planned:,} rows, {rendered:,} rendered "
            f"in {wall:.2f}s = {planned / wall:,.0f} rows/s"
        )
        print(
            f"peak memory (max RSS): {rss_after / 1024:.0f} MiB "
            f"(before planning: {rss_before / 1024:.0f} MiB)"
        )
        wall, planned, _ = timed_plan(url, TODAY, args.render)
        print(f"re-run of the same day: {planned} new rows in {wall:.2f}s (idempotent)")
    finally:
        dispose_engines()
        if not args.keep:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    main()

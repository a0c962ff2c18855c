"""Benchmark: what one Prometheus scrape of the API's GET /metrics costs on a large ledger.

Loads N ledger rows (default 100,000) over 50 organizations into a fresh PostgreSQL database
(COPY, untimed): the rows spread over the last ``--days`` local days of each organization (30:
a month of history, a thirtieth of it today; 1: every row today, the worst case), mostly sent,
some failed, skipped and unknown, today's partly pending; each day has its daily run. Then times
``--scrapes`` scrapes one after another over HTTP against one ``reminders serve`` process, as
Prometheus makes them, and prints p50/p99/max wall time and the collector's own query time
(``reminders_ledger_scrape_seconds``).

    PYTHONPATH=. .venv/bin/python bench/metrics_scrape.py
    PYTHONPATH=. .venv/bin/python bench/metrics_scrape.py --days 1     # every row today
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import requests

from app.domain import planning
from bench.plan_day import ZONES, load
from bench.scratch import database
from tests.metrics.exposition import Samples, samples, total
from tests.serving import serve

SEND_TIME = datetime.strptime("09:00", "%H:%M").time()  # bench.plan_day.load's send time
# One in a hundred of earlier days' rows: 90 sent, 4 failed, 5 skipped, 1 unknown.
EARLIER = ["sent"] * 90 + ["failed"] * 4 + ["skipped"] * 5 + ["unknown"]
# Today's, mid-day: half sent, the rest waiting, a few in flight or refused.
TODAY = ["sent"] * 50 + ["pending"] * 40 + ["sending"] * 4 + ["failed"] * 3 + ["skipped"] * 3


def fill_ledger(url: str, *, rows: int, orgs: int, days: int, now: datetime) -> None:
    """``rows`` ledger rows, one per subscription ``load`` made, and each day's daily run."""
    today = {o: planning.local_date(now, ZONES[o % len(ZONES)]) for o in range(1, orgs + 1)}
    with psycopg.connect(url) as conn:
        with conn.cursor().copy(
            "COPY reminders (org_id, subscription_id, customer_id, expires_on, lead_days,"
            " local_date, days_left, phone, status, body, segments, encoding, attempts,"
            " next_attempt_at, claimed_at, created_at, updated_at) FROM STDIN"
        ) as cp:
            for i in range(1, rows + 1):
                org = 1 + i % orgs  # load()'s organization of subscription i
                back = (i // orgs) % days
                status = (TODAY if back == 0 else EARLIER)[i % 100]
                at = now - timedelta(days=back, minutes=i % 600)
                claimed = at if status in ("sending", "unknown") else None
                cp.write_row(
                    (
                        org,
                        i,
                        i,
                        today[org] + timedelta(days=3),
                        3,
                        today[org] - timedelta(days=back),
                        3,
                        f"+1202{i % 10_000_000:07d}",
                        status,
                        f"Hi Customer {i}, your Fiber 500 plan ends in 3 days.",
                        1,
                        "GSM-7",
                        0 if status == "pending" else 1,
                        at if status == "pending" else None,
                        claimed,
                        at,
                        at,
                    )
                )
        with conn.cursor().copy(
            "COPY daily_runs (org_id, local_date, status, planned, started_at, finished_at)"
            " FROM STDIN"
        ) as cp:
            for org, day in today.items():
                for back in range(days):
                    local = day - timedelta(days=back)
                    start = planning.send_time_instant(local, ZONES[org % len(ZONES)], SEND_TIME)
                    if start > now:
                        continue
                    done = back > 0
                    cp.write_row(
                        (
                            org,
                            local,
                            "finished" if done else "planned",
                            rows // orgs // days,
                            start,
                            start + timedelta(minutes=20) if done else None,
                        )
                    )
        conn.execute("ANALYZE")


def scrapes(base: str, n: int) -> tuple[list[float], list[float], Samples]:
    """Wall time of each scrape, the collector's own query time it reported, the last one."""
    wall, queries = [], []
    last: Samples = {}
    with requests.Session() as http:
        for _ in range(n):
            t0 = time.perf_counter()
            answer = http.get(base + "/metrics", timeout=30)
            wall.append(time.perf_counter() - t0)
            answer.raise_for_status()
            last = samples(answer.text)
            queries.append(last[("reminders_ledger_scrape_seconds", ())])
    return wall, queries, last


def ms(values: list[float]) -> str:
    q = statistics.quantiles(values, n=100)
    return f"p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms, max {max(values) * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--orgs", type=int, default=50)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()

    with database("reminders_bench_metrics") as url:
        t0 = time.perf_counter()
        load(url, args.rows, args.orgs)
        fill_ledger(url, rows=args.rows, orgs=args.orgs, days=args.days, now=datetime.now(UTC))
        print(
            f"ledger: {args.rows:,} rows over {args.orgs} organizations and {args.days} days "
            f"(loaded in {time.perf_counter() - t0:.1f} s, untimed)"
        )
        with tempfile.TemporaryDirectory() as tmp:
            env = {"DATABASE_URL": url, "LOG_LEVEL": "WARNING"}
            with serve(env, Path(tmp)) as server:
                scrapes(server.base, 5)  # warm: connections, plans, caches
                wall, queries, last = scrapes(server.base, args.scrapes)
    print(
        f"{args.scrapes} scrapes of GET /metrics, one at a time "
        f"({total(last, 'reminders_ledger_rows'):,.0f} rows today, "
        f"{total(last, 'reminders_unknown_rows'):,.0f} unknown, {len(last)} samples):"
    )
    print(f"  wall (HTTP, whole answer)   {ms(wall)}")
    print(f"  ledger queries (collector)  {ms(queries)}")


if __name__ == "__main__":
    main()

"""Benchmark: the HTTP API against the CSV path, and reading the ledger under load.

1. Upserts N subscriptions (default 100,000) through ``POST /v1/organizations/{slug}/subscriptions``
   in batches of 5,000, and the same N through ``reminders import`` (the command, a process
   of its own) into a second organization: items per second for each, and their ratio (the API
   should be no slower per item).
2. Fills the ledger with one row per subscription (COPY, untimed) and times
   ``GET /v1/organizations/{slug}/messages`` with 50 concurrent readers (pages of 100 at random
   depths, some filtered by status): p50 and p99 latency.

A real ``reminders serve`` process on a fresh PostgreSQL database.

    PYTHONPATH=. .venv/bin/python bench/api.py          # the figures in the README
    PYTHONPATH=. .venv/bin/python bench/api.py --subscriptions 10000 --requests 500   # quick
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import requests

from app.api.pages import encode
from app.db.migrate import upgrade
from app.db.session import dispose_engines, get_engine
from app.services.api_keys import create_key
from app.services.orgs import OrgInput, add_org
from app.settings import Settings
from tests.serving import serve

ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ROOT = Path(__file__).resolve().parents[1]
BATCH = 5000
EXPIRES = date(2030, 1, 31)


def items(n: int) -> list[dict[str, str]]:
    return [
        {
            "customer_id": f"c{i}",
            "name": f"Customer {i}",
            "phone": f"+1202{i % 10_000_000:07d}",
            "subscription_id": f"s{i}",
            "plan": "Fiber 500",
            "expires_on": (EXPIRES + timedelta(days=i % 30)).isoformat(),
            "amount": "49.90",
            "currency": "USD",
        }
        for i in range(n)
    ]


def through_api(base: str, key: str, rows: list[dict[str, str]]) -> float:
    session = requests.Session()
    headers = {"Authorization": f"Bearer {key}"}
    started = time.perf_counter()
    for start in range(0, len(rows), BATCH):
        response = session.post(
            f"{base}/v1/organizations/api/subscriptions",
            json={"items": rows[start : start + BATCH]},
            headers=headers,
            timeout=300,
        )
        response.raise_for_status()
    return time.perf_counter() - started


def through_csv(url: str, rows: list[dict[str, str]], tmp: Path) -> float:
    path = tmp / "subs.csv"
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "app", "import", "csv", str(path)],
        env=env,
        check=True,
        capture_output=True,
        timeout=3600,
    )
    return time.perf_counter() - started


def fill_ledger(url: str, org_slug: str) -> int:
    """One sent row per subscription of the organization, with a body (COPY)."""
    now = datetime.now(UTC)
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        subs = conn.execute(
            "SELECT s.id, s.customer_id, s.expires_on FROM subscriptions s "
            "JOIN organizations o ON o.id = s.org_id WHERE o.slug = %s",
            (org_slug,),
        ).fetchall()
        org_id = conn.execute(
            "SELECT id FROM organizations WHERE slug = %s", (org_slug,)
        ).fetchone()
        assert org_id is not None
        statuses = ["sent"] * 8 + ["failed", "skipped"]
        with conn.cursor().copy(
            "COPY reminders (org_id, subscription_id, customer_id, expires_on, lead_days,"
            " local_date, days_left, phone, status, body, segments, encoding, attempts,"
            " created_at, updated_at) FROM STDIN"
        ) as cp:
            for i, (sid, cid, expires) in enumerate(subs):
                cp.write_row(
                    (
                        org_id[0],
                        sid,
                        cid,
                        expires,
                        3,
                        expires - timedelta(days=3),
                        3,
                        f"+1202{i % 10_000_000:07d}",
                        statuses[i % len(statuses)],
                        f"Hi Customer {i}, your Fiber 500 plan ends in 3 days.",
                        1,
                        "GSM-7",
                        1,
                        now,
                        now,
                    )
                )
        conn.execute("ANALYZE")
    return len(subs)


def readers(base: str, key: str, *, n_readers: int, n_requests: int, rows: int) -> list[float]:
    headers = {"Authorization": f"Bearer {key}"}
    local = threading.local()

    def one(i: int) -> float:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        rng = random.Random(i)
        params: dict[str, str | int] = {"limit": 100}
        if rng.random() < 0.5:
            params["status"] = rng.choice(["sent", "failed", "skipped"])
        if rng.random() < 0.7:  # a page at a random depth, as a cursor would give it
            params["cursor"] = encode(rng.randrange(rows))
        started = time.perf_counter()
        response = session.get(
            f"{base}/v1/organizations/api/messages", params=params, headers=headers, timeout=60
        )
        response.raise_for_status()
        return time.perf_counter() - started

    with ThreadPoolExecutor(n_readers) as pool:
        return list(pool.map(one, range(n_requests)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscriptions", type=int, default=100_000)
    parser.add_argument("--readers", type=int, default=50)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--api-workers", type=int, default=1)
    args = parser.parse_args()

    name = f"reminders_bench_api_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(ADMIN, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    try:
        upgrade(url)
        engine = get_engine(url)
        now = datetime.now(UTC)
        with engine.begin() as conn:
            for slug in ("api", "csv"):
                add_org(
                    conn,
                    OrgInput(slug=slug, name=slug, timezone="UTC"),
                    settings=Settings(),
                    now=now,
                )
            _, key = create_key(conn, slug="api", admin=False, name="bench", now=now)
        rows = items(args.subscriptions)
        with tempfile.TemporaryDirectory() as tmp:
            env = {"DATABASE_URL": url, "LOG_LEVEL": "WARNING"}
            with serve(env, Path(tmp), args=("--workers", str(args.api_workers))) as server:
                api_s = through_api(server.base, key, rows)
                csv_s = through_csv(url, rows, Path(tmp))
                n = len(rows)
                print(f"upsert {n} subscriptions, batches of {BATCH}:")
                print(f"  API  {api_s:8.2f} s  {n / api_s:10.0f} items/s")
                print(f"  CSV  {csv_s:8.2f} s  {n / csv_s:10.0f} items/s (`reminders import`)")
                print(f"  API time per item / CSV time per item: {api_s / csv_s:.2f}")
                ledger = fill_ledger(url, "api")
                times = readers(
                    server.base, key, n_readers=args.readers, n_requests=args.requests, rows=ledger
                )
        q = statistics.quantiles(times, n=100)
        print(
            f"GET messages, {args.readers} readers, {len(times)} requests, ledger {ledger} rows: "
            f"p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms"
        )
    finally:
        dispose_engines()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    main()

"""Benchmark: CPU of one process planning and sending a day, without Celery or HTTP.

Plans N texts on a fresh PostgreSQL database and sends them through the engine's Sender in
batches of 1,000 with a recording provider and no rate limit, then prints the process CPU per
text of each part. It isolates the engine's own cost (claim, checks, rendering, outcome
writes) from the broker's and the provider's: run it from two checkouts, alternating, to
compare commits.

    .venv/bin/python bench/send_cpu.py [--texts 5000]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.db import ledger  # noqa: E402
from app.db.migrate import upgrade  # noqa: E402
from app.db.session import dispose_engines, get_engine  # noqa: E402
from app.domain.planning import utcnow  # noqa: E402
from app.services.engine import load_orgs, plan_day  # noqa: E402
from tests.factories import (  # noqa: E402
    RecordingProvider,
    add_subscription,
    make_org,
    make_sender,
)

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=5000)
    n = parser.parse_args().texts
    name = f"bench_cpu_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(ADMIN, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade(url)
        engine = get_engine(url)
        org = make_org(engine, now=utcnow(), send_window="00:00-00:00")
        expires = utcnow().date() + timedelta(days=3)
        for i in range(n):
            add_subscription(
                engine, org, expires_on=expires, phone=f"+1415{2_000_000 + i}", ext=f"{i}"
            )
        sender = make_sender(engine, RecordingProvider())
        t0 = time.process_time()
        with engine.begin() as conn:
            plan_day(conn, now=utcnow(), orgs=load_orgs(conn))
        t1 = time.process_time()
        with engine.connect() as conn:
            ids = ledger.due_ids(conn, now=utcnow(), limit=n)
        sent = 0
        for start in range(0, len(ids), 1000):
            sent += sender.send_ids(ids[start : start + 1000]).sent
        t2 = time.process_time()
        sender.close()
        print(f"texts sent:     {sent:,} of {n:,}")
        print(f"plan CPU:       {1e3 * (t1 - t0) / n:.3f} ms per text")
        print(f"send CPU:       {1e3 * (t2 - t1) / n:.3f} ms per text")
    finally:
        dispose_engines()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    main()

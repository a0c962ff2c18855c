"""Benchmark: client CPU of one batch's ``ledger.load_pending`` (the rows a send batch re-reads
before it renders), 1,000 ids, on PostgreSQL.

The ids match no row, so the server's part is nothing and what is timed is the statement's
making: compiling, binding the ids and the driver's parsing. ``--root DIR`` measures another
checkout's code; run it against the commit before, alternating:

    .venv/bin/python bench/load_pending.py [--root DIR] [--batches 200] [--ids 1000]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import uuid

import psycopg

ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.path.join(os.path.dirname(__file__), ".."))
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--ids", type=int, default=1000)
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.root))
    name = f"bench_load_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
        importlib.import_module("app.db.migrate").upgrade(url)
        engine = importlib.import_module("app.db.session").make_engine(url)
        ledger = importlib.import_module("app.db.ledger")
        ids = list(range(1_000_000, 1_000_000 + args.ids))
        with engine.connect() as conn:
            for _ in range(5):  # caches warm
                ledger.load_pending(conn, ids)
            cpu = time.process_time()
            for _ in range(args.batches):
                ledger.load_pending(conn, ids)
            per_batch = (time.process_time() - cpu) / args.batches
        engine.dispose()
        print(
            f"load_pending of {args.ids:,} ids: {per_batch * 1000:.2f} ms CPU per batch, "
            f"{per_batch / args.ids * 1e6:.1f} us per text ({args.root})"
        )
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()

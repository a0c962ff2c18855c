"""Benchmark: outbound event delivery to a local endpoint, in events per second.

Creates a fresh PostgreSQL database with ``--orgs`` organizations, each with one endpoint (all
event types) at bench/event_sink.py, a receiver in its own process answering 200 after
``--delay-ms``. Fills the outbox through the real emit path: ``--events`` opt-outs recorded by
``ledger.add_opt_out``, 500 to a transaction, each written with its ``optout.created`` event.
Then delivers them ``--runs`` times per variant, alternating the variants and rotating their
order every round: in this process with ``deliver_due`` at each ``--concurrency``
(EVENTS_CONCURRENCY), and with ``--celery`` also through a real worker's ``deliver_events``
task (two pool processes, the production command), enqueued once and timed until the sink has
every event. Between runs every delivery is made due again with the operator's replay (``reminders
events replay``'s code path) and the table vacuumed; the sink restarts on the same port, so each
run's figures are its own.

Per run: events per second, CPU milliseconds per event of the delivering process (this one or
the worker's tree), of the sink, of this database's PostgreSQL backends and of the whole machine,
PostgreSQL commits and WAL bytes per event; and the checks: every event arrived (distinct
``webhook-id`` at the sink == N), every signature verifies (PyPI ``standardwebhooks``), every
delivery ``delivered``. Then the median of each figure per variant, and the machine's load.

    .venv/bin/python bench/events.py                                # 10,000 events, 16 and 64
    .venv/bin/python bench/events.py --events 2000 --runs 1 --celery
    .venv/bin/python bench/events.py --delay-ms 50 --concurrency 16 64 256

Needs PostgreSQL and Redis as bench/send_day.py does (BENCH_PG_ADMIN_URL, BENCH_REDIS_URL).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from event_sink import Received, distinct, verify
from send_day import (
    DatabaseBackends,
    Scratch,
    add_endpoints,
    database_wal_bytes,
    end_group,
    free_wal,
    keep_wal,
    load,
    machine_busy_seconds,
    per,
    phone_of,
    start_sink,
    start_worker,
    stop_server,
    table_stats,
    tree_cpu_seconds,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FILL_CHUNK = 500  # opt-outs (and their events) per transaction


@dataclass
class Run:
    variant: str
    seconds: float
    delivering_cpu: float
    sink_cpu: float
    pg_db_cpu: float
    machine_busy: float
    commits: int
    wal_bytes: float
    got: Received
    statuses: dict[str, int]

    def figures(self, n: int) -> dict[str, float]:
        return {
            "events_per_s": per(n, self.seconds),
            "seconds": self.seconds,
            "cpu_ms_delivering": per(self.delivering_cpu * 1000, n),
            "cpu_ms_sink": per(self.sink_cpu * 1000, n),
            "cpu_ms_postgres_db": per(self.pg_db_cpu * 1000, n),
            "cpu_ms_machine": per(self.machine_busy * 1000, n),
            "pg_commits_per_event": per(self.commits, n),
            "pg_wal_bytes_per_event": per(self.wal_bytes, n),
        }

    def ok(self, n: int) -> bool:
        g = self.got
        return (
            g.distinct == n
            and g.bad_signatures == 0
            and self.statuses == {"delivered": n}
            and sum(g.by_type.values()) == n
        )


class Bench(Scratch):
    """The database, the Redis db, the endpoints and their secrets; ``close`` undoes them."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__("reminders_bench_events", tmp_prefix="events_bench_")
        self.args = args
        os.environ.update(
            DATABASE_URL=self.pg_url,
            CELERY_BROKER_URL=self.redis_url,
            REDIS_URL=self.redis_url,
            EVENTS_ALLOW_PRIVATE="1",
        )
        self.port = 0
        self.secrets: dict[str, str] = {}  # URL path -> secret
        from app.db.migrate import upgrade
        from app.db.session import get_engine

        upgrade(self.pg_url)
        self.engine = get_engine(self.pg_url)

    def settings(self, concurrency: int) -> Any:
        from app.settings import Settings

        return Settings(
            database_url=self.pg_url, events_concurrency=concurrency, events_allow_private=True
        )

    def sink(self, run: str) -> tuple[Any, str, Path]:
        """A fresh sink for one run, on the port the endpoints were registered with."""
        sink, url, record = start_sink(self.tmp, self.args.delay_ms, port=self.port, run=run)
        self.port = int(url.rsplit(":", 1)[1])
        return sink, url, record

    def fill(self, base_url: str) -> None:
        """Organizations with an endpoint each, then N opt-outs with their events."""
        from sqlalchemy import text

        from app.db import ledger

        args = self.args
        slugs = load(self.pg_url, args.events, datetime.now(UTC), [None] * args.orgs, 1.0, 1)
        self.secrets = add_endpoints(self.pg_url, slugs, base_url)
        with self.engine.connect() as conn:
            ids = dict(conn.execute(text("SELECT slug, id FROM organizations")).all())
        org_ids = [ids[slug] for slug in slugs]
        t0, cpu0 = time.perf_counter(), time.process_time()
        for start in range(0, args.events, FILL_CHUNK):
            with self.engine.begin() as conn:
                for i in range(start, min(start + FILL_CHUNK, args.events)):
                    ledger.add_opt_out(
                        conn,
                        org_id=org_ids[i % len(org_ids)],
                        phone_e164=phone_of(i),
                        source="bench",
                        now=datetime.now(UTC),
                    )
        took, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        print(
            f"filled {args.events:,} events (opt-outs through ledger.add_opt_out) for"
            f" {args.orgs} organizations in {took:.1f} s = {per(took * 1000, args.events):.2f}"
            f" ms per event ({per(cpu * 1000, args.events):.2f} ms CPU of this process)"
        )

    def rearm(self) -> None:
        """Every delivery due again (the operator's replay), the table vacuumed."""
        from app.services.events import replay

        with self.engine.begin() as conn:
            again = replay(conn, now=datetime.now(UTC), statuses=("delivered",))
        assert again == self.args.events, again
        with psycopg.connect(self.pg_url.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE event_deliveries")

    def statuses(self) -> dict[str, int]:
        from app.db import outbox

        with self.engine.connect() as conn:
            return outbox.counts(conn)

    def worker(self, concurrency: int) -> Any:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "EVENTS_CONCURRENCY": str(concurrency),
            "SMS_PROVIDER": "console",
            "SMS_CONSOLE_OUTPUT": str(self.tmp / "sms.txt"),
            "WORKER_HEARTBEAT_FILE": str(self.tmp / "worker.heartbeat"),
            "LOG_LEVEL": "INFO",
        }
        return start_worker(ROOT, env, self.tmp / f"worker-{concurrency}.log", processes=2)


def deliver(bench: Bench, variant: str, run: str) -> Run:
    """One delivery of every event, measured."""
    n = bench.args.events
    kind, concurrency = variant.split("-")
    worker = bench.worker(int(concurrency)) if kind == "celery" else None
    bench.engine.dispose()  # the rearm's backend: its commits would land in this run's count
    sink, url, record = bench.sink(run)
    stats_before = table_stats(bench.admin, bench.pg_url, bench.name)
    keep_wal(bench.admin, bench.name)
    lsn0 = bench.admin.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
    backends = DatabaseBackends(bench.name)
    backends.start()
    busy0, sink0 = machine_busy_seconds(), tree_cpu_seconds(sink.pid)
    if worker is None:
        from app.services.event_delivery import deliver_due

        cpu0 = time.process_time()
        t0 = time.monotonic()
        report = deliver_due(bench.engine, bench.settings(int(concurrency)), budget_seconds=600)
        seconds = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        assert report.delivered == n, report
    else:
        from app.tasks.scheduler import deliver_events

        cpu0 = tree_cpu_seconds(worker.pid)
        t0 = time.monotonic()
        deliver_events.apply_async()
        while distinct(url) < n:
            backends.sample()
            if time.monotonic() - t0 > 600:
                sys.exit(f"{variant}: gave up after 600 s; see {bench.tmp}")
            time.sleep(0.05)
        seconds = time.monotonic() - t0
        cpu = tree_cpu_seconds(worker.pid) - cpu0
    backends.sample()
    bench.engine.dispose()  # an idle backend flushes its commit count only as it exits
    busy, sink_cpu = machine_busy_seconds() - busy0, tree_cpu_seconds(sink.pid) - sink0
    lsn1 = bench.admin.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
    if worker is not None:
        time.sleep(1.0)  # the task records its last answers after the sink has them
        end_group(worker, signal.SIGTERM)
    stop_server(sink)
    stats = table_stats(bench.admin, bench.pg_url, bench.name)
    wal = database_wal_bytes(bench.admin, bench.name, lsn0, lsn1)
    free_wal(bench.admin, bench.name)
    if wal is None:
        wal = float(
            bench.admin.execute(
                "SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (lsn1, lsn0)
            ).fetchone()[0]  # type: ignore[index]
        )
    return Run(
        variant=variant,
        seconds=seconds,
        delivering_cpu=cpu,
        sink_cpu=sink_cpu,
        pg_db_cpu=backends.seconds(),
        machine_busy=busy,
        # The stats reads' own transaction is a rollback, not a commit.
        commits=stats["xact_commit"] - stats_before["xact_commit"],
        wal_bytes=wal,
        got=verify(record, bench.secrets),
        statuses=bench.statuses(),
    )


def show(run: Run, n: int) -> None:
    f = run.figures(n)
    g = run.got
    print(
        f"{run.variant:<10} {f['events_per_s']:8,.0f} events/s ({f['seconds']:.1f} s);"
        f" CPU ms/event delivering {f['cpu_ms_delivering']:.3f}  sink {f['cpu_ms_sink']:.3f}"
        f"  postgres(db) {f['cpu_ms_postgres_db']:.3f}  machine {f['cpu_ms_machine']:.3f};"
        f" commits/event {f['pg_commits_per_event']:.3f}  WAL {f['pg_wal_bytes_per_event']:,.0f}"
        f" B/event; sink: {g.distinct:,} distinct of {g.requests:,} requests,"
        f" {g.bad_signatures} bad signatures, deliveries {run.statuses}"
        f" -> {'OK' if run.ok(n) else 'FAILED'}",
        flush=True,
    )


def summary(runs: list[Run], n: int) -> None:
    variants = list(dict.fromkeys(r.variant for r in runs))
    keys = list(runs[0].figures(n))
    counted = ", ".join(f"{v}: {sum(r.variant == v for r in runs)} runs" for v in variants)
    print(f"\nmedians ({counted})")
    print(f"{'figure':<24}" + "".join(f"{v:>14}" for v in variants))
    medians = {
        v: {k: statistics.median(r.figures(n)[k] for r in runs if r.variant == v) for k in keys}
        for v in variants
    }
    for k in keys:
        print(f"{k:<24}" + "".join(f"{medians[v][k]:14.4g}" for v in variants))
    base = variants[0]
    for v in variants[1:]:
        ratio = per(medians[v]["events_per_s"], medians[base]["events_per_s"])
        print(f"{v} / {base}: {ratio:.2f} x the events/s")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--orgs", type=int, default=10, help="organizations, an endpoint each")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[16, 64],
        help="EVENTS_CONCURRENCY values, each a variant",
    )
    parser.add_argument(
        "--celery",
        action="store_true",
        help="also deliver through a real worker's deliver_events (the first concurrency)",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per variant")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="the sink's answer time")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    if args.orgs < 2:
        parser.error("--orgs must be at least 2")
    return args


def main() -> None:
    args = parse_args()
    variants = [f"inproc-{c}" for c in args.concurrency]
    if args.celery:
        variants.append(f"celery-{args.concurrency[0]}")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the start")
    bench = Bench(args)
    runs: list[Run] = []
    try:
        sink, url, _ = bench.sink("-fill")
        bench.fill(url)
        stop_server(sink)
        for round_ in range(args.runs):
            shift = round_ % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                if runs:
                    bench.rearm()
                runs.append(deliver(bench, variant, f"-{len(runs)}"))
                show(runs[-1], args.events)
        summary(runs, args.events)
    finally:
        bench.close(keep=args.keep)
    if not all(r.ok(args.events) for r in runs):
        print("CHECKS FAILED")
        sys.exit(1)


if __name__ == "__main__":
    main()

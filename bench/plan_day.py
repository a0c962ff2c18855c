"""Benchmark: plan one day over a million subscriptions on PostgreSQL.

Loads N subscriptions (default 1,000,000) over 1,000 organizations with monthly expiries into a
fresh database (COPY, untimed), plans yesterday so the ledger is in its steady state, then times
today's plan as the daily run makes it: every due row inserted set-based (its text is rendered
when it leaves); with ``--render`` also every body rendered and stored, as the manual run does.
Prints wall time, rows per second and the process's peak memory.

``--pages`` plans as the daily task does: each page committed and handed on (to nothing here)
before the next. ``--statements`` adds where the daily plan's time went, statement by
statement. ``--root DIR`` plans with another checkout's code (its app and migrations), so two
trees are measured by one script; ``--json`` adds the figures as one JSON line.

    .venv/bin/python bench/plan_day.py                       # 1,000,000 subscriptions
    .venv/bin/python bench/plan_day.py --subscriptions 100000   # memory should not change
    .venv/bin/python bench/plan_day.py --root ../main --json    # main's code, same bench
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import sys
import time
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import event

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


def code(root: Path | None) -> Any:
    """The tree under test's modules (this checkout's unless ``--root``)."""
    if root is not None:
        sys.path.insert(0, str(root))
    names = ("app.db.migrate", "app.db.session", "app.services.engine")
    migrate, session, engine = (importlib.import_module(n) for n in names)
    return type("Code", (), {"upgrade": migrate.upgrade, "session": session, "engine": engine})


class Statements:
    """Wall time per statement (its first 100 characters), summed over the plan."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: defaultdict[str, int] = defaultdict(int)

    def listen(self, engine: Any) -> None:
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def stop(self, engine: Any) -> None:
        event.remove(engine, "before_cursor_execute", self._before)
        event.remove(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, cursor: Any, stmt: str, *args: Any) -> None:
        conn.info["bench_started"] = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, stmt: str, *args: Any) -> None:
        key = " ".join(stmt.split())[:100]
        self.seconds[key] += time.perf_counter() - conn.info.pop("bench_started")
        self.calls[key] += 1

    def show(self, wall: float, top: int = 8) -> None:
        spent = sorted(self.seconds.items(), key=lambda kv: -kv[1])
        print(f"  statements: {sum(self.seconds.values()):.2f}s of {wall:.2f}s; top {top}:")
        for key, seconds in spent[:top]:
            print(f"  {seconds:7.3f}s {self.calls[key]:4d}x  {key}")


def timed_plan(
    code: Any,
    url: str,
    day: date,
    *,
    render: bool,
    pages: bool,
    statements: Statements | None = None,
) -> tuple[float, int, int]:
    engine = code.session.get_engine(url)
    if statements is not None:
        statements.listen(engine)
    if pages:
        # 06:00 UTC is the same date in every zone of ZONES: the daily task plans "today".
        now = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=6)
        kwargs: dict[str, Any] = {"on_page": lambda ids: None}
    else:
        now = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
        kwargs = {"on_date": day}
    start = time.perf_counter()
    with engine.connect() as conn:
        orgs = code.engine.load_orgs(conn)
        report = code.engine.plan_day(conn, now=now, orgs=orgs, render=render, **kwargs)
        conn.commit()
    wall = time.perf_counter() - start
    if statements is not None:
        statements.stop(engine)
    return wall, report.planned, report.rendered


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
    parser.add_argument(
        "--pages", action="store_true", help="commit page by page, as the daily task does"
    )
    parser.add_argument(
        "--statements", action="store_true", help="show the daily plan's slowest statements"
    )
    parser.add_argument("--root", type=Path, help="plan with this checkout's code")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    tree = code(args.root.resolve() if args.root else None)
    plan = {"render": args.render, "pages": args.pages}

    name = f"bench_plan_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(ADMIN, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN.rsplit("/", 1)[0] + "/" + name
    figures: dict[str, float] = {}
    try:
        tree.upgrade(url)
        t0 = time.perf_counter()
        load(url, args.subscriptions, args.orgs)
        print(
            f"loaded {args.subscriptions:,} subscriptions over {args.orgs:,} organizations "
            f"in {time.perf_counter() - t0:.1f}s (COPY, not part of the plan)"
        )
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        wall, planned, rendered = timed_plan(tree, url, TODAY - timedelta(days=1), **plan)
        figures.update(cold_s=wall, cold_rows=planned)
        print(
            f"cold plan (empty ledger, catch-up of every lead): {planned:,} rows, "
            f"{rendered:,} rendered in {wall:.2f}s = {planned / wall:,.0f} rows/s"
        )
        statements = Statements() if args.statements else None
        wall, planned, rendered = timed_plan(tree, url, TODAY, statements=statements, **plan)
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        figures.update(daily_s=wall, daily_rows=planned, peak_mib=rss_after / 1024)
        print(
            f"daily plan (steady state): {planned:,} rows, {rendered:,} rendered "
            f"in {wall:.2f}s = {planned / wall:,.0f} rows/s"
        )
        if statements is not None:
            statements.show(wall)
        print(
            f"peak memory (max RSS): {rss_after / 1024:.0f} MiB "
            f"(before planning: {rss_before / 1024:.0f} MiB)"
        )
        wall, planned, _ = timed_plan(tree, url, TODAY, **plan)
        figures.update(rerun_s=wall, rerun_rows=planned)
        print(f"re-run of the same day: {planned} new rows in {wall:.2f}s (idempotent)")
        if args.json:
            print(json.dumps(figures, sort_keys=True))
    finally:
        tree.session.dispose_engines()
        if not args.keep:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    main()

"""Benchmark: a day of reminders sent end to end by real Celery workers over Redis.

Creates a fresh PostgreSQL database, loads N customers whose subscriptions expire in 3 days
(one reminder each), starts one worker with two pool processes (the production command), hands
the day over with `enqueue_day`, waits until every row is ``sent``, and prints texts per second,
worker CPU milliseconds per text and the pool processes' peak memory. The console provider
writes every text to a file, which is checked for exactly one line per customer.

    .venv/bin/python bench/send_day.py                       # 50,000 texts, console provider
    .venv/bin/python bench/send_day.py --texts 5000 --keep   # smaller; keep the database

Needs PostgreSQL (BENCH_PG_ADMIN_URL, default postgresql://postgres@127.0.0.1:5432/postgres)
and Redis (BENCH_REDIS_URL, default redis://127.0.0.1:6379); takes a free Redis db number.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_redis_db() -> tuple[str, redis.Redis, str]:
    root = redis.Redis.from_url(f"{REDIS_BASE}/0")
    token = f"bench-{os.getpid()}"
    for db in range(1, 16):
        if root.set(f"reminders-test-db:{db}", token, nx=True, ex=3600):
            url = f"{REDIS_BASE}/{db}"
            redis.Redis.from_url(url).flushdb()
            return url, root, f"reminders-test-db:{db}"
    sys.exit("no free Redis database number (1-15)")


def load(pg_url: str, n: int, today: datetime) -> None:
    """Bulk-load one organization and N customers with subscriptions (COPY, not INSERTs)."""
    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=False) as conn:
        org_id = conn.execute(
            "INSERT INTO organizations (slug, name, timezone, send_time, window_start, window_end,"
            " lead_days, country, sender, rate_per_second, active, created_at)"
            " VALUES ('bench', 'Bench Co', 'UTC', '00:00', '00:00', '00:00', '5,3,1', 'US',"
            " NULL, 1000000, true, now()) RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
        buf = io.StringIO()
        for i in range(n):
            phone = f"+1202{3000000 + i:07d}"
            buf.write(f"{org_id}\tc{i}\tCustomer {i}\t{phone}\t{phone}\n")
        with conn.cursor().copy(
            "COPY customers (org_id, external_id, name, phone, phone_e164) FROM STDIN"
        ) as cp:
            cp.write(buf.getvalue())
        expires = (today + timedelta(days=3)).date().isoformat()
        conn.execute(
            "INSERT INTO subscriptions (org_id, customer_id, external_id, plan, expires_on,"
            " amount, currency, status)"
            " SELECT org_id, id, 's' || external_id, 'Fiber 500', %s, 49.90, 'USD', 'active'"
            " FROM customers WHERE org_id = %s",
            (expires, org_id),
        )
        conn.commit()


def proc_tree(pid: int) -> list[int]:
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in children:
        out.extend(proc_tree(int(child)))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process plus its waited-for children (from /proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def machine_busy_seconds() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(x) for x in fields]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLK_TCK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=50_000)
    parser.add_argument("--processes", type=int, default=2, help="worker pool processes")
    parser.add_argument("--concurrency", type=int, default=32, help="SMS_CONCURRENCY per process")
    parser.add_argument("--batch", type=int, default=200, help="SMS_BATCH_SIZE")
    parser.add_argument("--log-level", default="INFO", help="the worker's LOG_LEVEL")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()

    name = f"reminders_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(PG_ADMIN, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    pg_url = (
        PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    )
    redis_url, redis_root, redis_claim = free_redis_db()
    tmp = Path(tempfile.mkdtemp(prefix="send_day_"))
    out = tmp / "sms.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "REDIS_", "SMS_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        DATABASE_URL=pg_url,
        CELERY_BROKER_URL=redis_url,
        REDIS_URL=redis_url,
        SMS_PROVIDER="console",
        SMS_CONSOLE_OUTPUT=str(out),
        SMS_RATE_PER_SECOND="1000000",
        SMS_CONCURRENCY=str(args.concurrency),
        SMS_BATCH_SIZE=str(args.batch),
        WORKER_HEARTBEAT_FILE=str(tmp / "worker.heartbeat"),
        LOG_LEVEL=args.log_level,
    )
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL")})
    worker = None
    try:
        from app.db.migrate import upgrade

        upgrade(pg_url)
        today = datetime.now(UTC)
        t0 = time.perf_counter()
        load(pg_url, args.texts, today)
        print(
            f"loaded {args.texts:,} customers and subscriptions in {time.perf_counter() - t0:.1f} s"
        )

        log = (tmp / "worker.log").open("wb")
        worker = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("celery")),
                "-A",
                "app.tasks.scheduler",
                "worker",
                "--pool",
                "prefork",
                "-c",
                str(args.processes),
                "-l",
                "INFO",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while not (tmp / "worker.heartbeat").exists():
            if worker.poll() is not None:
                sys.exit(f"worker exited; see {tmp / 'worker.log'}")
            time.sleep(0.1)
        time.sleep(1.0)  # let the pool processes come up

        from sqlalchemy import func, select

        from app.db.models import Reminder
        from app.db.session import get_engine
        from app.tasks.client import enqueue_day

        engine = get_engine(pg_url)
        cpu_before = sum(cpu_seconds(p) for p in proc_tree(worker.pid))
        busy_before = machine_busy_seconds()
        start = time.perf_counter()
        enqueue_day(on_date=None, org_slugs=["bench"])
        peak = 0.0
        sent = 0
        while sent < args.texts:
            time.sleep(0.25)
            peak = max(peak, *(peak_rss_mb(p) for p in proc_tree(worker.pid)[1:]), 0.0)
            with engine.connect() as conn:
                sent = conn.execute(
                    select(func.count()).where(Reminder.status == "sent")
                ).scalar_one()
            if time.perf_counter() - start > 1200:
                sys.exit(f"gave up after 20 minutes with {sent} sent")
        elapsed = time.perf_counter() - start
        cpu = sum(cpu_seconds(p) for p in proc_tree(worker.pid)) - cpu_before
        busy = machine_busy_seconds() - busy_before
        with engine.connect() as conn:
            first, last = conn.execute(
                select(func.min(Reminder.sent_at), func.max(Reminder.sent_at))
            ).one()
        calls = Counter(line.split("\t")[2] for line in out.read_text().splitlines())
        assert len(calls) == args.texts and max(calls.values()) == 1, "a text went out twice"
        send_span = (last - first).total_seconds()
        print(f"texts sent:              {sent:,} (each exactly once in {out.name})")
        print(f"end to end (plan + send): {elapsed:.1f} s = {sent / elapsed:,.0f} texts/s")
        print(f"sending only:            {send_span:.1f} s = {sent / send_span:,.0f} texts/s")
        print(f"worker CPU:              {cpu * 1000 / sent:.2f} ms per text ({cpu:.1f} s)")
        print(f"whole machine CPU:       {busy * 1000 / sent:.2f} ms per text (PostgreSQL, Redis)")
        print(f"worker peak memory:      {peak:.0f} MB per pool process (VmHWM)")
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        from app.db.session import dispose_engines

        dispose_engines()
        if not args.keep:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            print(f"kept database {name}")
        redis.Redis.from_url(redis_url).flushdb()
        redis_root.delete(redis_claim)
        print(f"worker log: {tmp / 'worker.log'}")


if __name__ == "__main__":
    main()

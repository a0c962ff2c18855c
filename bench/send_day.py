"""Benchmark: a day of reminders sent end to end by real Celery workers over Redis.

Creates a fresh PostgreSQL database, loads N customers whose subscriptions expire in 3 days
(one reminder each), starts one worker with two pool processes (the production command), hands
the day over with `enqueue_day`, waits until every row is ``sent``, and prints texts per second,
worker CPU milliseconds per text and the pool processes' peak memory. The console provider
writes every text to a file, which is checked for exactly one line per customer.

With ``--provider twilio`` the day is spread over ``--senders`` organizations, each with its own
From number and ``--rate`` texts per second, and sent through the Twilio adapter over real HTTP
to the local fake Messages API (tests/twilio_fake.py, a subprocess on a free 127.0.0.1 port)
answering after ``--delay-ms``, as the real API does across the internet. The fake's record is
checked: every customer got exactly one text, and no sender had more than its rate in any
one-second window.

    .venv/bin/python bench/send_day.py                       # 50,000 texts, console provider
    .venv/bin/python bench/send_day.py --texts 5000 --keep   # smaller; keep the database
    .venv/bin/python bench/send_day.py --provider twilio     # 50 senders x 30/s, 100 ms answers

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


def phone_of(i: int) -> str:
    return f"+1202{3000000 + i:07d}"


def sender_of(k: int) -> str:
    return f"+1500555{k:04d}"


def load(pg_url: str, n: int, today: datetime, senders: list[str | None], rate: float) -> list[str]:
    """Bulk-load one organization per sender and N customers with subscriptions (COPY, not
    INSERTs); customer i belongs to organization i mod K, so every send batch mixes senders
    the way a real day of many organizations does. Returns the organizations' slugs."""
    slugs = ["bench"] if len(senders) == 1 else [f"bench-{k:03d}" for k in range(len(senders))]
    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=False) as conn:
        org_ids = [
            conn.execute(
                "INSERT INTO organizations (slug, name, timezone, send_time, window_start,"
                " window_end, lead_days, country, sender, rate_per_second, active, created_at)"
                " VALUES (%s, %s, 'UTC', '00:00', '00:00', '00:00', '5,3,1', 'US', %s, %s, true,"
                " now()) RETURNING id",
                (slug, f"Bench Co {slug}", sender, rate),
            ).fetchone()[0]  # type: ignore[index]
            for slug, sender in zip(slugs, senders, strict=True)
        ]
        buf = io.StringIO()
        for i in range(n):
            phone = phone_of(i)
            buf.write(f"{org_ids[i % len(org_ids)]}\tc{i}\tCustomer {i}\t{phone}\t{phone}\n")
        with conn.cursor().copy(
            "COPY customers (org_id, external_id, name, phone, phone_e164) FROM STDIN"
        ) as cp:
            cp.write(buf.getvalue())
        expires = (today + timedelta(days=3)).date().isoformat()
        conn.execute(
            "INSERT INTO subscriptions (org_id, customer_id, external_id, plan, expires_on,"
            " amount, currency, status)"
            " SELECT org_id, id, 's' || external_id, 'Fiber 500', %s, 49.90, 'USD', 'active'"
            " FROM customers ORDER BY id",
            (expires,),
        )
        conn.commit()
    return slugs


def start_fake(tmp: Path, delay_ms: float) -> tuple[subprocess.Popen[bytes], str, Path]:
    """The fake Messages API as its own process on a free loopback port (it picks it)."""
    record = tmp / "twilio_record.tsv"
    fake = subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.twilio_fake", "--port", "0"),
            *("--delay-ms", str(delay_ms), "--record", str(record)),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=(tmp / "fake.log").open("wb"),
        start_new_session=True,
    )
    assert fake.stdout is not None
    line = fake.stdout.readline().decode()
    if not line.startswith("fake Twilio listening on "):
        sys.exit(f"the fake Twilio did not start; see {tmp / 'fake.log'}")
    return fake, line.split()[4], record


def stop_fake(fake: subprocess.Popen[bytes]) -> None:
    if fake.poll() is None:
        fake.send_signal(signal.SIGTERM)
        try:
            fake.wait(timeout=30)
        except subprocess.TimeoutExpired:
            fake.kill()


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most texts in any half-open window [t, t + window)."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def check_record(record: Path, n: int, senders: list[str | None], rate: float) -> bool:
    """Every customer exactly once; no sender over its rate in any one-second window."""
    by_sender: dict[str, list[float]] = {}
    to_count: Counter[str] = Counter()
    for line in record.read_text().splitlines():
        sender, to, received = line.split("\t")
        by_sender.setdefault(sender, []).append(float(received))
        to_count[to] += 1
    expected = {phone_of(i) for i in range(n)}
    twice = sum(1 for c in to_count.values() if c > 1)
    missing = len(expected - set(to_count))
    extra = len(set(to_count) - expected)
    once = twice == 0 and missing == 0 and extra == 0
    print(
        f"fake's record:           {sum(to_count.values()):,} texts to {len(to_count):,} numbers:"
        f" {missing} customers missed, {twice} got more than one, {extra} unknown numbers"
        f" -> {'OK' if once else 'FAILED'}"
    )
    # Slots are spaced exactly 1/rate apart; the texts reach the fake with a few ms of jitter
    # (threads, the GIL, loopback), which can pull one extra into a window.
    allowed = int(rate) + max(1, round(rate * 0.05))
    worst = {s: max_in_window(ts) for s, ts in by_sender.items()}
    over = {s: w for s, w in worst.items() if w > allowed}
    top = max(worst.values(), default=0)
    spans = [max(ts) - min(ts) for ts in by_sender.values() if len(ts) > 1]
    print(
        f"per-sender rate:         {len(worst)} senders at {rate:g}/s: at most {top} texts in any"
        f" 1 s window (allowed {allowed}; {len(over)} senders over)"
        f" -> {'OK' if not over else 'FAILED'}"
    )
    if spans:
        mean = sum(len(ts) / max(max(ts) - min(ts), 1e-9) for ts in by_sender.values()) / len(
            by_sender
        )
        print(f"                         mean rate per sender over its own span {mean:.1f}/s")
    unknown_senders = set(by_sender) - {s for s in senders if s}
    if unknown_senders:
        print(f"                         unexpected senders: {sorted(unknown_senders)[:5]}")
    return once and not over and not unknown_senders


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


def named_cpu_seconds(comm: str) -> float:
    """CPU of every process called ``comm`` (PostgreSQL's backends exit into the postmaster's
    children's time, which is counted too)."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() == comm:
                    total += cpu_seconds(int(proc.name))
            except OSError:
                continue
    return total


def machine_busy_seconds() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(x) for x in fields]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLK_TCK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=50_000)
    parser.add_argument("--provider", choices=("console", "twilio"), default="console")
    parser.add_argument(
        "--senders", type=int, default=50, help="twilio: organizations, each its own From number"
    )
    parser.add_argument("--rate", type=float, default=30.0, help="twilio: texts/s per sender")
    parser.add_argument(
        "--delay-ms", type=float, default=100.0, help="twilio: the fake API's answer time"
    )
    parser.add_argument("--processes", type=int, default=2, help="worker pool processes")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="SMS_CONCURRENCY per process (default 32 console, 256 twilio)",
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="SMS_BATCH_SIZE (default 200 console, 1000 twilio)"
    )
    parser.add_argument(
        "--open-batches", type=int, default=8, help="SMS_OPEN_BATCHES per worker process"
    )
    parser.add_argument("--log-level", default="INFO", help="the worker's LOG_LEVEL")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    twilio = args.provider == "twilio"
    concurrency = args.concurrency or (256 if twilio else 32)
    # A process works one batch at a time and books its slots per sender: a bigger batch keeps
    # each sender's slot timeline booked while the other process claims and writes its own.
    batch = args.batch or (1000 if twilio else 200)
    senders: list[str | None] = [sender_of(k) for k in range(args.senders)] if twilio else [None]
    rate = args.rate if twilio else 1_000_000.0

    name = f"reminders_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(PG_ADMIN, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    pg_url = (
        PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    )
    redis_url, redis_root, redis_claim = free_redis_db()
    tmp = Path(tempfile.mkdtemp(prefix="send_day_"))
    out = tmp / "sms.txt"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CELERY_", "REDIS_", "SMS_", "TWILIO_", "WEBHOOK_"))
    }
    env.update(
        PYTHONPATH=str(ROOT),
        DATABASE_URL=pg_url,
        CELERY_BROKER_URL=redis_url,
        REDIS_URL=redis_url,
        SMS_PROVIDER=args.provider,
        SMS_CONSOLE_OUTPUT=str(out),
        SMS_RATE_PER_SECOND=str(rate),
        SMS_CONCURRENCY=str(concurrency),
        SMS_BATCH_SIZE=str(batch),
        SMS_OPEN_BATCHES=str(args.open_batches),
        WORKER_HEARTBEAT_FILE=str(tmp / "worker.heartbeat"),
        LOG_LEVEL=args.log_level,
    )
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL")})
    worker = None
    fake: subprocess.Popen[bytes] | None = None
    record = tmp / "twilio_record.tsv"
    ok = False
    try:
        if twilio:
            from tests.twilio_fake import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, DEFAULT_FROM

            fake, base_url, record = start_fake(tmp, args.delay_ms)
            env.update(
                TWILIO_ACCOUNT_SID=DEFAULT_ACCOUNT_SID,
                TWILIO_AUTH_TOKEN=DEFAULT_AUTH_TOKEN,
                TWILIO_FROM_NUMBER=DEFAULT_FROM,
                TWILIO_API_BASE_URL=base_url,
            )
            print(
                f"fake Twilio at {base_url}, answering after {args.delay_ms:g} ms;"
                f" {len(senders)} senders x {rate:g}/s = {len(senders) * rate:,.0f}/s allowed;"
                f" SMS_CONCURRENCY={concurrency}, SMS_BATCH_SIZE={batch},"
                f" SMS_OPEN_BATCHES={args.open_batches}"
            )
        from app.db.migrate import upgrade

        upgrade(pg_url)
        today = datetime.now(UTC)
        t0 = time.perf_counter()
        slugs = load(pg_url, args.texts, today, senders, rate)
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
        fake_before = cpu_seconds(fake.pid) if fake else 0.0
        busy_before = machine_busy_seconds()
        pg_before, redis_before = named_cpu_seconds("postgres"), named_cpu_seconds("redis-server")
        start = time.perf_counter()
        enqueue_day(on_date=None, org_slugs=slugs)
        peak = 0.0
        settled, progress_at = 0, start
        while settled < args.texts:
            time.sleep(0.25)
            peak = max(peak, *(peak_rss_mb(p) for p in proc_tree(worker.pid)[1:]), 0.0)
            with engine.connect() as conn:
                now_settled = conn.execute(
                    select(func.count()).where(Reminder.status.notin_(("pending", "sending")))
                ).scalar_one()
            if now_settled != settled:
                settled, progress_at = now_settled, time.perf_counter()
            elif time.perf_counter() - progress_at > 30:
                # No beat runs here: rows handed back to the ledger (deferred) would wait for
                # the sweeper for ever.
                sys.exit(f"stalled: {args.texts - settled:,} rows unsettled for 30 s; see the log")
            if time.perf_counter() - start > 1200:
                sys.exit(f"gave up after 20 minutes with {settled} settled")
        elapsed = time.perf_counter() - start
        cpu = sum(cpu_seconds(p) for p in proc_tree(worker.pid)) - cpu_before
        fake_cpu = cpu_seconds(fake.pid) - fake_before if fake else 0.0
        busy = machine_busy_seconds() - busy_before
        pg_cpu = named_cpu_seconds("postgres") - pg_before
        redis_cpu = named_cpu_seconds("redis-server") - redis_before
        with engine.connect() as conn:
            first, last = conn.execute(
                select(func.min(Reminder.sent_at), func.max(Reminder.sent_at))
            ).one()
            statuses = dict(
                conn.execute(select(Reminder.status, func.count()).group_by(Reminder.status)).all()
            )
        sent = statuses.get("sent", 0)
        ok = sent == args.texts
        if twilio:
            assert fake is not None
            stop_fake(fake)
            ok = check_record(record, args.texts, senders, rate) and ok
        else:
            calls = Counter(line.split("\t")[2] for line in out.read_text().splitlines())
            once = len(calls) == args.texts and max(calls.values()) == 1
            print(f"console file:            {len(calls):,} numbers, each exactly once: {once}")
            ok = ok and once
        assert first is not None and last is not None, "nothing was sent"
        send_span = (last - first).total_seconds()
        print(f"ledger:                  {statuses}")
        print(f"end to end (plan + send): {elapsed:.1f} s = {sent / elapsed:,.0f} texts/s")
        print(f"sending only:            {send_span:.1f} s = {sent / send_span:,.0f} texts/s")
        print(f"worker CPU:              {cpu * 1000 / sent:.2f} ms per text ({cpu:.1f} s)")
        if twilio:
            print(
                f"fake Twilio CPU:         {fake_cpu * 1000 / sent:.2f} ms per text"
                f" ({fake_cpu:.1f} s, {fake_cpu / elapsed:.0%} of one core)"
            )
        print(
            f"PostgreSQL / Redis CPU:  {pg_cpu * 1000 / sent:.2f} / {redis_cpu * 1000 / sent:.2f}"
            " ms per text"
        )
        print(
            f"whole machine CPU:       {busy * 1000 / sent:.2f} ms per text"
            f" ({busy / elapsed:.0%} of one core: workers, PostgreSQL, Redis"
            f"{', fake' if twilio else ''}, and anything else running)"
        )
        print(f"worker peak memory:      {peak:.0f} MB per pool process (VmHWM)")
        if not ok:
            print("CHECKS FAILED")
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        if fake is not None:
            stop_fake(fake)
        from app.db.session import dispose_engines

        dispose_engines()
        if not args.keep:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            print(f"kept database {name}")
        redis.Redis.from_url(redis_url).flushdb()
        redis_root.delete(redis_claim)
        print(f"worker log: {tmp / 'worker.log'}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()

"""Benchmark: a day of reminders sent end to end by real Celery workers over Redis.

Creates a fresh PostgreSQL database, loads N customers whose subscriptions expire in 3 days
(one reminder each), starts one worker with two pool processes (the production command), hands
the day over with `enqueue_day`, waits until every row is settled, and prints one block of
figures: texts per second, CPU milliseconds per text of each component (worker, PostgreSQL,
Redis, the fake API, the whole machine), PostgreSQL's writes, commits and WAL per text, Redis
commands per text, the busiest one-second window per sender in texts and segments, and the share
of the senders' combined allowance that was used. ``--json`` adds the same figures as one JSON
line (bench/compare.sh reads it). The console provider writes every text to a file, which is
checked for exactly one line per customer.

With ``--provider twilio`` the day is spread over ``--senders`` organizations, each with its own
From number and ``--rate`` segments per second, and sent through the Twilio adapter over real
HTTP to the local fake Messages API (tests/twilio_fake.py, a subprocess on a free 127.0.0.1
port) answering after ``--delay-ms``, as the real API does across the internet. The fake's
record is checked: every customer got exactly one text, and no sender had more segments than
its rate in any one-second window. ``--segments K`` makes every text K GSM-7 segments long.

``--kill-after N`` SIGKILLs the worker's process group once N texts have reached the provider,
then starts a fresh worker and beat (a 2 s tick, 30 s lease and reconciliation delay) and waits
until every row is ``sent``: it reports the rows that went through reconciliation, the seconds
from the kill until every customer had a text, and the customers texted more than once.

Without ``--kill-after`` no beat runs unless ``--beat`` is given: a row a worker hands back to
the ledger (deferred: no rate slot soon enough) then stalls the run, which says so.

``--events`` registers one endpoint per organization (every event type) at bench/event_sink.py,
a host's receiver in its own process answering after ``--events-delay-ms``, before the day: the
workers write a ``message.sent`` event with each text and deliver them from their queue. The
day's figures are then read once the sink has every event the outbox holds (the extra seconds
after the last row settled are reported), so the worker's CPU, the commits and the WAL per text
include the delivery; the sink's record is checked: every event arrived, each signature
verifies (PyPI ``standardwebhooks``), one ``message.sent`` per sent row.

``--root DIR`` runs another checkout's code (its app, migrations, fake and worker) with this
script, so two trees are measured the same way (bench/compare.sh).

    .venv/bin/python bench/send_day.py                       # 50,000 texts, console provider
    .venv/bin/python bench/send_day.py --texts 5000 --keep   # smaller; keep the database
    .venv/bin/python bench/send_day.py --provider twilio     # 50 senders x 30/s, 100 ms answers
    .venv/bin/python bench/send_day.py --provider twilio --texts 2000 --kill-after 600
    .venv/bin/python bench/send_day.py --provider twilio --texts 20000 --beat --events

Needs PostgreSQL (BENCH_PG_ADMIN_URL, default postgresql://postgres@127.0.0.1:5432/postgres)
and Redis (BENCH_REDIS_URL, default redis://127.0.0.1:6379); takes a free Redis db number.
The machine's CPU, every postgres process's, Redis's command counts and the server's WAL are
machine- or server-wide, so the run counts also what else happened meanwhile (it says when that
was much). Two figures are the run's own: its database's backends' CPU (sampled while they
live) and its database's WAL (pg_waldump over the run's LSN range, kept by a temporary slot).
Statements are not counted (that needs pg_stat_statements in shared_preload_libraries).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import redis

DEFAULT_ROOT = Path(__file__).resolve().parents[1]

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
CLK_TCK = os.sysconf("SC_CLK_TCK")
CELERY = str(Path(sys.executable).with_name("celery"))
# What --kill-after gives the workers: short enough that reconciliation happens within the run.
KILL_ENV = {"REMINDER_STALE_SENDING_SECONDS": "30", "REMINDER_RECONCILE_DELAY_SECONDS": "30"}
BEAT_ENV = {"REMINDER_TICK_SECONDS": "2"}  # the processes started with beat
# PostgreSQL 15 flushes a busy backend's table counters at most once a second; an idle one's
# within 10 s; an ending one's at exit. The workers are stopped before the last read, so this
# only has to cover the exits.
STATS_SETTLE_SECONDS = 1.5
FILLER = "Questions about your plan? Call us any time, we are glad to help. "


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


def org_name(slug: str) -> str:
    return f"Bench Co {slug}"


def long_template(segments: int, *, names: list[str], n: int, expires: date) -> str | None:
    """The built-in wording padded with plain GSM-7 text so that every customer's text is
    ``segments`` long (None for one: the built-in default already is)."""
    if segments == 1:
        return None
    from app.domain.templates import (
        DEFAULT_TEMPLATE,
        CustomerVars,
        OrganizationVars,
        SubscriptionVars,
        render,
    )

    subscription = SubscriptionVars(
        plan="Fiber 500", expires_on=expires, amount=Decimal("49.90"), currency="USD"
    )
    lengths = [
        len(
            render(
                DEFAULT_TEMPLATE,
                customer=CustomerVars(name=f"Customer {i}"),
                organization=OrganizationVars(name=name),
                subscription=subscription,
                days_left=3,
                lead_days=3,
            )
        )
        for i in (0, n - 1)
        for name in (names[0], names[-1])
    ]
    # The longest text ends 10 characters short of K full segments of 153; the shortest stays
    # past K - 1 of them as long as names differ by less than 143 characters.
    pad = 153 * segments - 10 - max(lengths) - 1
    return DEFAULT_TEMPLATE + " " + (FILLER * (pad // len(FILLER) + 1))[: pad - 1] + "."


def load(
    pg_url: str,
    n: int,
    today: datetime,
    senders: list[str | None],
    rate: float,
    segments: int,
) -> list[str]:
    """Bulk-load one organization per sender and N customers with subscriptions (COPY, not
    INSERTs); customer i belongs to organization i mod K, so every send batch mixes senders
    the way a real day of many organizations does. Returns the organizations' slugs."""
    slugs = ["bench"] if len(senders) == 1 else [f"bench-{k:03d}" for k in range(len(senders))]
    expires = (today + timedelta(days=3)).date()
    template = long_template(segments, names=[org_name(s) for s in slugs], n=n, expires=expires)
    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=False) as conn:
        org_ids = [
            conn.execute(
                "INSERT INTO organizations (slug, name, timezone, send_time, window_start,"
                " window_end, lead_days, country, sender, rate_per_second, active, created_at)"
                " VALUES (%s, %s, 'UTC', '00:00', '00:00', '00:00', '5,3,1', 'US', %s, %s, true,"
                " now()) RETURNING id",
                (slug, org_name(slug), sender, rate),
            ).fetchone()[0]  # type: ignore[index]
            for slug, sender in zip(slugs, senders, strict=True)
        ]
        if template is not None:
            from app.db.models import DEFAULT_TEMPLATE_LEAD

            conn.cursor().executemany(
                "INSERT INTO templates (org_id, lead_days, body, updated_at)"
                " VALUES (%s, %s, %s, now())",
                [(org_id, DEFAULT_TEMPLATE_LEAD, template) for org_id in org_ids],
            )
        buf = io.StringIO()
        for i in range(n):
            phone = phone_of(i)
            buf.write(f"{org_ids[i % len(org_ids)]}\tc{i}\tCustomer {i}\t{phone}\t{phone}\n")
        with conn.cursor().copy(
            "COPY customers (org_id, external_id, name, phone, phone_e164) FROM STDIN"
        ) as cp:
            cp.write(buf.getvalue())
        conn.execute(
            "INSERT INTO subscriptions (org_id, customer_id, external_id, plan, expires_on,"
            " amount, currency, status)"
            " SELECT org_id, id, 's' || external_id, 'Fiber 500', %s, 49.90, 'USD', 'active'"
            " FROM customers ORDER BY id",
            (expires.isoformat(),),
        )
        conn.commit()
    return slugs


# -- processes -------------------------------------------------------------------------------
def start_server(
    argv: list[str], *, cwd: Path, env: dict[str, str], log: Path, ready: str
) -> tuple[subprocess.Popen[bytes], str]:
    """A local server as its own process; it prints ``ready`` then its URL once it listens."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log.open("wb"),
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith(ready):
        sys.exit(f"{ready.strip()}: did not start; see {log}")
    return proc, line.removeprefix(ready).split()[0]


def start_fake(root: Path, tmp: Path, delay_ms: float) -> tuple[subprocess.Popen[bytes], str, Path]:
    """The fake Messages API as its own process on a free loopback port (it picks it)."""
    record = tmp / "twilio_record.tsv"
    fake, url = start_server(
        [
            *(sys.executable, "-m", "tests.twilio_fake", "--port", "0"),
            *("--delay-ms", str(delay_ms), "--record", str(record)),
        ],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        log=tmp / "fake.log",
        ready="fake Twilio listening on ",
    )
    return fake, url, record


def start_sink(
    tmp: Path, delay_ms: float, *, port: int = 0, run: str = ""
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """bench/event_sink.py, a host's events endpoint, as its own process (``port`` 0: a free
    one); returns it, its base URL and the file it writes what it received to as it stops."""
    record = tmp / f"events{run}.jsonl"
    sink, url = start_server(
        [
            *(sys.executable, str(Path(__file__).with_name("event_sink.py"))),
            *("--port", str(port), "--delay-ms", str(delay_ms), "--record", str(record)),
        ],
        cwd=tmp,
        env=dict(os.environ),
        log=tmp / f"sink{run}.log",
        ready="event sink listening on ",
    )
    return sink, url, record


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the fake and the sink write their records then), SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def start_celery(
    root: Path, argv: list[str], env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """A celery process in its own session, so it is killed with its pool children at once."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [CELERY, "-A", "app.tasks.scheduler", *argv],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start_worker(
    root: Path, env: dict[str, str], log: Path, processes: int, queues: str | None = None
) -> subprocess.Popen[bytes]:
    """The production worker command (``queues``: only those, ``-Q``); returns once it reported
    ready (its heartbeat file)."""
    heartbeat = Path(env["WORKER_HEARTBEAT_FILE"])
    heartbeat.unlink(missing_ok=True)
    argv = ["worker", "--pool", "prefork", "-c", str(processes), "-l", "INFO"]
    argv += ["-Q", queues] if queues else []
    worker = start_celery(root, [*argv, "--without-gossip", "--without-mingle"], env, log)
    while not heartbeat.exists():
        if worker.poll() is not None:
            sys.exit(f"worker exited; see {log}")
        time.sleep(0.1)
    time.sleep(1.0)  # let the pool processes come up
    return worker


def end_group(proc: subprocess.Popen[bytes], sig: signal.Signals, timeout: float = 60) -> None:
    """Signal the process group; SIGKILL it if it has not ended in time; reap stragglers."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # pool children outliving their parent


def add_endpoints(pg_url: str, slugs: list[str], base_url: str) -> dict[str, str]:
    """An events endpoint (every type) for each organization at ``base_url`` + its own path;
    returns path -> that endpoint's secret, for checking what arrived."""
    from app.db.session import get_engine
    from app.services.events import add_endpoint
    from app.settings import Settings

    settings = Settings(database_url=pg_url, events_allow_private=True)
    secrets = {}
    with get_engine(pg_url).begin() as conn:
        for slug in slugs:
            path = f"/o/{slug}"
            made = add_endpoint(
                conn, slug, base_url + path, types=None, settings=settings, now=datetime.now(UTC)
            )
            assert made.secret is not None
            secrets[path] = made.secret
    return secrets


class Scratch:
    """A run's own fresh database, free Redis db and temporary directory; ``close`` drops the
    database (unless ``keep``) and empties and frees the Redis db."""

    def __init__(self, prefix: str, *, tmp_prefix: str) -> None:
        self.admin = psycopg.connect(PG_ADMIN, autocommit=True)
        self.name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self.admin.execute(f'CREATE DATABASE "{self.name}"')
        base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        self.pg_url = f"{base}/{self.name}"
        self.redis_url, self._redis_root, self._redis_claim = free_redis_db()
        self.tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix))

    def close(self, *, keep: bool) -> None:
        from app.db.session import dispose_engines

        dispose_engines()
        if not keep:
            self.admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        else:
            print(f"kept database {self.name}")
        redis.Redis.from_url(self.redis_url).flushdb()
        self._redis_root.delete(self._redis_claim)
        print(f"logs: {self.tmp}")


# -- counters --------------------------------------------------------------------------------
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


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in proc_tree(pid))


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


class DatabaseBackends:
    """CPU of the PostgreSQL backends serving one database, sampled while they live: an ended
    backend's time goes to the postmaster, shared with every other database on the server."""

    def __init__(self, dbname: str) -> None:
        self._title = f" {dbname} ".encode()
        self._base: dict[int, float] = {}
        self._last: dict[int, float] = {}

    def sample(self) -> None:
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if self._title in (proc / "cmdline").read_bytes():
                        self._last[int(proc.name)] = cpu_seconds(int(proc.name))
                except OSError:
                    continue

    def start(self) -> None:
        self.sample()
        self._base = dict(self._last)

    def seconds(self) -> float:
        return sum(cpu - self._base.get(pid, 0.0) for pid, cpu in self._last.items())


def machine_busy_seconds() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(x) for x in fields]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLK_TCK


@dataclass
class Counters:
    """Machine- and server-wide counters, read when the day is handed over and when it is done."""

    busy: float
    bench: float  # this process's own (polling, the kill's checks)
    postgres: float
    redis: float
    fake: float
    wal_lsn: str
    redis_calls: dict[str, int]
    redis_total: int


def read_counters(admin: psycopg.Connection[Any], rconn: redis.Redis, fake_pid: int) -> Counters:
    stats: dict[str, Any] = rconn.info("stats")  # type: ignore[assignment]
    commands: dict[str, dict[str, Any]] = rconn.info("commandstats")  # type: ignore[assignment]
    row = admin.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return Counters(
        busy=machine_busy_seconds(),
        bench=time.process_time(),
        postgres=named_cpu_seconds("postgres"),
        redis=named_cpu_seconds("redis-server"),
        fake=tree_cpu_seconds(fake_pid) if fake_pid else 0.0,
        wal_lsn=row[0],
        redis_calls={k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in commands.items()},
        redis_total=int(stats["total_commands_processed"]),
    )


def table_stats(admin: psycopg.Connection[Any], pg_url: str, dbname: str) -> dict[str, int]:
    """The ledger's tuple counters and the database's transactions, as flushed so far (the
    table's from inside its database, in one transaction rolled back: one rollback)."""
    time.sleep(STATS_SETTLE_SECONDS)
    with psycopg.connect(pg_url.replace("+psycopg", "")) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        tup = conn.execute(
            "SELECT n_tup_ins, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
            " WHERE relname = 'reminders'"
        ).fetchone()
        conn.rollback()
    admin.execute("SELECT pg_stat_clear_snapshot()")
    xact = admin.execute(
        "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = %s", (dbname,)
    ).fetchone()
    assert tup is not None and xact is not None
    names = ("ins", "upd", "hot_upd", "xact_commit", "xact_rollback")
    return dict(zip(names, (int(v) for v in (*tup, *xact)), strict=True))


WAL_RECORD = re.compile(r"len \(rec/tot\):\s*\d+/\s*(\d+),.*? rel \d+/(\d+)/")


def keep_wal(admin: psycopg.Connection[Any], name: str) -> None:
    """A temporary replication slot, so that the server keeps the run's WAL for pg_waldump
    (every DROP DATABASE elsewhere forces a checkpoint, which recycles old segments); it ends
    with this session, or with ``free_wal``."""
    try:
        admin.execute("SELECT pg_create_physical_replication_slot(%s, true, true)", (name,))
    except psycopg.Error as exc:
        print(f"no replication slot to keep the run's WAL ({exc}); WAL per database may be lost")


def free_wal(admin: psycopg.Connection[Any], name: str) -> None:
    admin.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
        (name,),
    )


def database_wal_bytes(
    admin: psycopg.Connection[Any], dbname: str, start: str, end: str
) -> float | None:
    """The WAL of records touching this database's relations between two LSNs, by pg_waldump
    (None where it cannot read the server's pg_wal or the range is gone). The LSN difference
    also holds whatever else the server did meanwhile; this leaves out only the commit records
    (~40 B each)."""
    row = admin.execute(
        "SELECT current_setting('data_directory'), current_setting('server_version_num'),"
        " (SELECT oid FROM pg_database WHERE datname = %s)",
        (dbname,),
    ).fetchone()
    assert row is not None
    datadir, version, oid = Path(row[0]), int(row[1]), int(row[2])
    tool = Path(f"/usr/lib/postgresql/{version // 10000}/bin/pg_waldump")
    if not tool.exists() or not (datadir / "pg_wal").is_dir():
        return None
    dump = subprocess.run(
        [tool, "--path", datadir / "pg_wal", "--start", start, "--end", end],
        capture_output=True,
        text=True,
        check=False,
    )
    if dump.returncode:
        print(f"pg_waldump: {dump.stderr.strip()[:300]}")
        return None
    return float(
        sum(
            int(m.group(1))
            for line in dump.stdout.splitlines()
            if (m := WAL_RECORD.search(line)) and int(m.group(2)) == oid
        )
    )


# -- the provider's side ---------------------------------------------------------------------
def busiest_window(events: list[tuple[float, int]], window: float = 1.0) -> int:
    """The largest total weight of events in any half-open window [t, t + window)."""
    events = sorted(events)
    best = running = lo = 0
    for t, weight in events:
        running += weight
        while t - events[lo][0] >= window:
            running -= events[lo][1]
            lo += 1
        best = max(best, running)
    return best


def fake_has(base_url: str, n: int) -> bool:
    """Whether the fake has accepted at least ``n`` texts: its list's page n - 1 of size 1."""
    from tests.twilio_fake import API_PREFIX, DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN

    url = f"{base_url}{API_PREFIX}{DEFAULT_ACCOUNT_SID}/Messages.json?PageSize=1&Page={n - 1}"
    auth = base64.b64encode(f"{DEFAULT_ACCOUNT_SID}:{DEFAULT_AUTH_TOKEN}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {auth}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return bool(json.load(answer)["messages"])


def console_lines(path: Path) -> list[tuple[str, str]]:
    """(sender, To) per text the console provider wrote."""
    if not path.exists():
        return []
    lines = [line.split("\t") for line in path.read_text().splitlines() if line]
    return [(fields[1], fields[2]) for fields in lines]


@dataclass
class Delivery:
    """What reached the provider, per customer and per sender."""

    texts: int
    missed: int
    duplicates: int  # customers texted more than once
    unknown_numbers: int
    unknown_senders: list[str]
    busiest_texts: int  # the most texts one sender had in a one-second window
    busiest_segments: int
    senders_over: int  # senders with a window of more segments than the rate
    # The same window by when the fake read each request (later than it arrived when the fake
    # waited for a core): the instrument's jitter added to the sender's.
    busiest_read_segments: int = 0
    first_texted: dict[str, float] = field(default_factory=dict)  # To -> received (monotonic)

    @property
    def once(self) -> bool:
        return self.missed == 0 and self.duplicates == 0 and self.unknown_numbers == 0


def delivery(
    sends: list[tuple[str, str, float | None, float | None]],
    *,
    n: int,
    senders: list[str | None],
    rate: float,
    segments_of: dict[str, int],
) -> Delivery:
    """Every customer exactly once; each sender's busiest one-second window, in texts and in
    segments (``segments_of``: To -> the segments of the text the ledger holds)."""
    to_count = Counter(to for _, to, _, _ in sends)
    expected = {phone_of(i) for i in range(n)}
    by_sender: dict[str, list[tuple[float, str]]] = {}
    first: dict[str, float] = {}
    read_by_sender: dict[str, list[tuple[float, int]]] = {}
    for sender, to, received, read in sends:
        if received is not None:
            by_sender.setdefault(sender, []).append((received, to))
            first[to] = min(first.get(to, received), received)
        if read is not None:
            read_by_sender.setdefault(sender, []).append((read, segments_of.get(to, 1)))
    texts = [busiest_window([(t, 1) for t, _ in ts]) for ts in by_sender.values()]
    segs = [
        busiest_window([(t, segments_of.get(to, 1)) for t, to in ts]) for ts in by_sender.values()
    ]
    return Delivery(
        texts=len(sends),
        missed=len(expected - set(to_count)),
        duplicates=sum(1 for c in to_count.values() if c > 1),
        unknown_numbers=len(set(to_count) - expected),
        unknown_senders=sorted({s for s, _, _, _ in sends} - {s or "-" for s in senders})[:5],
        busiest_texts=max(texts, default=0),
        busiest_segments=max(segs, default=0),
        senders_over=sum(1 for s in segs if s > rate + 1e-9),
        busiest_read_segments=max(map(busiest_window, read_by_sender.values()), default=0),
        first_texted=first,
    )


def read_record(record: Path) -> list[tuple[str, str, float | None, float | None]]:
    """sender, To, when the request reached the fake, when the fake read it (an older fake
    wrote only when it read it)."""
    sends: list[tuple[str, str, float | None, float | None]] = []
    for line in record.read_text().splitlines():
        sender, to, received, *read = line.split("\t")
        sends.append((sender, to, float(received), float(read[0] if read else received)))
    return sends


# -- the kill --------------------------------------------------------------------------------
SWEPT = re.compile(r"sweep: (\d+) texts left in sending by a dead worker")
RECONCILED = re.compile(r"reconcile: (checked=.*)")


def from_logs(logs: list[Path]) -> dict[str, int]:
    """What the workers said they released (sweep) and settled (reconcile)."""
    totals: Counter[str] = Counter()
    for log in logs:
        if not log.exists():
            continue
        for line in log.read_text(errors="replace").splitlines():
            if m := SWEPT.search(line):
                totals["swept"] += int(m.group(1))
            elif m := RECONCILED.search(line):
                for pair in m.group(1).split():
                    key, _, value = pair.partition("=")
                    if value.isdigit():
                        totals[f"reconcile_{key}"] += int(value)
    return dict(totals)


# -- figures ---------------------------------------------------------------------------------
def per(value: float, n: float) -> float:
    return value / n if n else 0.0


def print_block(f: dict[str, Any], *, twilio: bool, kill: bool) -> None:
    """The figures, one labelled line per area."""
    n = f["texts"]
    lines = [
        f"== {n:,} texts x {f['segments_per_text']:g} segments,"
        + (
            f" {f['senders']} senders x {f['rate']:g} segments/s =="
            if twilio
            else " console provider =="
        ),
        f"throughput     end to end {f['end_to_end_s']:.1f} s ="
        f" {f['texts_per_s_end_to_end']:,.0f} texts/s;"
        f" sending only {f['sending_s']:.1f} s = {f['texts_per_s_sending']:,.0f} texts/s"
        f" ({f['segments_per_s_sending']:,.0f} segments/s)",
    ]
    if twilio:
        lines.append(
            f"slots used     {f['slots_used']:.1%} of {f['senders']} x {f['rate']:g} ="
            f" {f['senders'] * f['rate']:,.0f} segments/s (sending only; goal >= 95%)"
        )
    lines += [
        f"CPU ms/text    worker {f['cpu_ms_worker']:.2f}"
        + (f" (+ beat {f['cpu_ms_beat']:.2f})" if f["cpu_ms_beat"] else "")
        + (
            f" (+ events worker {f['cpu_ms_events_worker']:.2f})"
            if f["cpu_ms_events_worker"]
            else ""
        )
        + f"  postgres {f['cpu_ms_postgres']:.2f} (this database's backends"
        f" {f['cpu_ms_postgres_db']:.2f})  redis {f['cpu_ms_redis']:.2f}"
        + (f"  fake {f['cpu_ms_fake']:.2f}" if twilio else "")
        + f"  machine {f['cpu_ms_machine']:.2f}"
        f" ({f['machine_busy_s']:.1f} s busy = {f['machine_cores']:.2f} cores;"
        f" this script {f['cpu_ms_bench']:.2f})",
        f"PostgreSQL     reminders per text: {f['pg_ins_per_text']:.2f} inserts,"
        f" {f['pg_upd_per_text']:.2f} updates ({f['pg_hot_upd_per_text']:.2f} HOT);"
        f" {f['pg_commits_per_text']:.2f} commits, {f['pg_rollbacks_per_text']:.2f} rollbacks;"
        f" WAL {f['pg_wal_bytes_per_text']:,.0f} B per text"
        f" (the whole server's {f['pg_wal_cluster_bytes_per_text']:,.0f});"
        " statements not counted (pg_stat_statements is not loaded)",
        f"Redis          {f['redis_commands_per_text']:.2f} commands per text:"
        f" {f['redis_limiter_per_text']:.2f} the rate limiter's"
        f" ({f['redis_scripts_per_text']:.2f} EVALSHA booking"
        f" {f['redis_bookings_per_text']:.2f} senders' slots, + the TIME/GET/SET inside),"
        f" {f['redis_other_per_text']:.2f} the rest (broker, results); top: {f['redis_top']}",
    ]
    if twilio:
        lines.append(
            f"busiest 1 s    {f['busiest_texts']} texts, {f['busiest_segments']} segments of"
            f" one sender = {f['busiest_ratio']:.2f} x the rate;"
            f" {f['senders_over']} senders over"
            f" -> {'VIOLATION' if f['senders_over'] else 'OK'}"
            f" (by when the fake read them: {f['busiest_read_segments']} segments)"
        )
    lines.append(
        f"delivery       {f['delivered']:,} texts: {f['missed']} customers missed,"
        f" {f['duplicates']} texted more than once, {f['unknown_numbers']} unknown numbers,"
        f" ledger {f['ledger']} -> {'OK' if f['delivery_ok'] else 'FAILED'}"
    )
    lines.append(f"worker memory  {f['worker_peak_mb']:.0f} MB peak per pool process (VmHWM)")
    if "events_ok" in f:
        lines.append(
            f"events         {f['events_received']:,} arrived {f['events_drain_s']:.1f} s after"
            f" the last row settled ({f['events_types']}); message.sent"
            f" {f['events_sent_received']:,} for {f['sent']:,} sent rows;"
            f" {f['events_repeated']} repeated, {f['events_bad_signatures']} bad signatures"
            f" -> {'OK' if f['events_ok'] else 'FAILED'}"
        )
    if kill:
        lines.append(
            f"kill           after {f['kill_after']:,} texts: {f['reconciled_rows']} rows"
            f" went through reconciliation (seen unknown; sweep logs {f['swept_rows']},"
            f" reconcile found {f['reconcile_sent']}, retried {f['reconcile_retried']});"
            f" every customer texted {f['kill_to_all_texted_s']:.1f} s after the kill,"
            f" all sent {f['kill_to_all_sent_s']:.1f} s; {f['duplicates']} duplicates"
        )
    print("\n".join(lines))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=50_000)
    parser.add_argument("--provider", choices=("console", "twilio"), default="console")
    parser.add_argument(
        "--senders", type=int, default=50, help="twilio: organizations, each its own From number"
    )
    parser.add_argument("--rate", type=float, default=30.0, help="twilio: segments/s per sender")
    parser.add_argument(
        "--delay-ms", type=float, default=100.0, help="twilio: the fake API's answer time"
    )
    parser.add_argument(
        "--segments", type=int, default=1, choices=range(1, 11), help="segments per text"
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
    parser.add_argument(
        "--kill-after",
        type=int,
        default=0,
        metavar="N",
        help="SIGKILL the worker once N texts reached the provider; recover with worker + beat",
    )
    parser.add_argument(
        "--beat",
        action="store_true",
        help="run beat (2 s tick, 30 s lease and delay) from the start: its sweeper sends the rows"
        " a worker handed back to the ledger (deferred), which otherwise stall the run",
    )
    parser.add_argument(
        "--events",
        action="store_true",
        help="an events endpoint per organization at a local sink; wait until every event arrived",
    )
    parser.add_argument(
        "--events-delay-ms", type=float, default=0.0, help="--events: the sink's answer time"
    )
    parser.add_argument(
        "--events-worker",
        action="store_true",
        help="--events: a worker of one process for the events queue only (-Q), the day's worker"
        " for the others",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=DEFAULT_ROOT,
        help="the checkout whose code runs (default: this script's)",
    )
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--log-level", default="INFO", help="the worker's LOG_LEVEL")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    if args.kill_after and not 0 < args.kill_after < args.texts:
        parser.error("--kill-after must be between 1 and --texts - 1")
    if args.events_worker and not args.events:
        parser.error("--events-worker needs --events")
    args.root = args.root.resolve()
    if not (args.root / "app" / "tasks" / "scheduler.py").exists():
        parser.error(f"--root {args.root} is not a checkout of this project")
    return args


@dataclass
class Watch:
    """What the wait for the day saw along the way."""

    peak_mb: float = 0.0
    seen_unknown: set[int] = field(default_factory=set)
    all_texted: float | None = None  # console: when every customer had a text (monotonic)
    killed_at: float = 0.0  # monotonic
    dead_cpu: float = 0.0  # the killed worker's CPU, read just before the kill


class Day(Scratch):
    """One run's database, Redis db, fake, worker and beat processes and files; ``close``
    undoes them all."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__("reminders_bench", tmp_prefix="send_day_")
        self.args = args
        self.root: Path = args.root
        self.twilio = args.provider == "twilio"
        self.kill_after: int = args.kill_after
        self.senders: list[str | None] = (
            [sender_of(k) for k in range(args.senders)] if self.twilio else [None]
        )
        self.rate: float = args.rate if self.twilio else 1_000_000.0
        self.out = self.tmp / "sms.txt"
        self.record = self.tmp / "twilio_record.tsv"
        self.logs = [self.tmp / "worker.log"]  # the workers', in order
        self.beat_log = self.tmp / "beat.log"
        self.workers: list[subprocess.Popen[bytes]] = []
        self.beat: subprocess.Popen[bytes] | None = None
        self.fake: subprocess.Popen[bytes] | None = None
        self.sink: subprocess.Popen[bytes] | None = None
        # --events-worker: the events queue has a worker of its own; the day's, the others.
        self.events_worker: subprocess.Popen[bytes] | None = None
        from app.config.celery_config import CONTROL_QUEUE, SEND_QUEUE

        self.queues = f"{SEND_QUEUE},{CONTROL_QUEUE}" if args.events_worker else None
        self.sink_url = ""
        self.sink_record = self.tmp / "events.jsonl"
        self.secrets: dict[str, str] = {}  # the sink's URL path -> that endpoint's secret
        self.base_url = ""
        self.env = self._env()
        os.environ.update({k: self.env[k] for k in ("DATABASE_URL", "CELERY_BROKER_URL")})
        os.environ["REDIS_URL"] = self.redis_url

    def _env(self) -> dict[str, str]:
        args = self.args
        # A process works one batch at a time and books its slots per sender: a bigger batch
        # keeps each sender's slot timeline booked while the other process claims its own.
        concurrency = args.concurrency or (256 if self.twilio else 32)
        self.batch = args.batch or (1000 if self.twilio else 200)
        self.concurrency = concurrency
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CELERY_", "REDIS_", "SMS_", "TWILIO_", "WEBHOOK_", "REMINDER_"))
        }
        env.update(
            PYTHONPATH=str(self.root),
            DATABASE_URL=self.pg_url,
            CELERY_BROKER_URL=self.redis_url,
            REDIS_URL=self.redis_url,
            SMS_PROVIDER=args.provider,
            SMS_CONSOLE_OUTPUT=str(self.out),
            SMS_RATE_PER_SECOND=str(self.rate),
            SMS_CONCURRENCY=str(concurrency),
            SMS_BATCH_SIZE=str(self.batch),
            SMS_OPEN_BATCHES=str(args.open_batches),
            SMS_MAX_SEGMENTS=str(max(3, args.segments)),
            WORKER_HEARTBEAT_FILE=str(self.tmp / "worker.heartbeat"),
            BEAT_HEARTBEAT_FILE=str(self.tmp / "beat.heartbeat"),
            LOG_LEVEL=args.log_level,
            **({"EVENTS_ALLOW_PRIVATE": "1"} if args.events else {}),
            **(KILL_ENV if self.kill_after or args.beat else {}),
            **(BEAT_ENV if args.beat else {}),
        )
        return env

    def start(self) -> list[str]:
        """The fake, the schema, the customers, the worker (and beat); the organizations."""
        args = self.args
        if self.twilio:
            from tests.twilio_fake import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, DEFAULT_FROM

            self.fake, self.base_url, self.record = start_fake(self.root, self.tmp, args.delay_ms)
            self.env.update(
                TWILIO_ACCOUNT_SID=DEFAULT_ACCOUNT_SID,
                TWILIO_AUTH_TOKEN=DEFAULT_AUTH_TOKEN,
                TWILIO_FROM_NUMBER=DEFAULT_FROM,
                TWILIO_API_BASE_URL=self.base_url,
            )
            print(
                f"fake Twilio at {self.base_url}, answering after {args.delay_ms:g} ms;"
                f" {len(self.senders)} senders x {self.rate:g}/s ="
                f" {len(self.senders) * self.rate:,.0f}/s allowed;"
                f" SMS_CONCURRENCY={self.concurrency}, SMS_BATCH_SIZE={self.batch},"
                f" SMS_OPEN_BATCHES={args.open_batches}"
            )
        print(f"code under test: {self.root}")
        from app.db.migrate import upgrade

        upgrade(self.pg_url)
        t0 = time.perf_counter()
        slugs = load(
            self.pg_url, args.texts, datetime.now(UTC), self.senders, self.rate, args.segments
        )
        print(
            f"loaded {args.texts:,} customers and subscriptions in {time.perf_counter() - t0:.1f} s"
        )
        if args.events:
            self.add_endpoints(slugs)
        self.workers.append(
            start_worker(self.root, self.env, self.logs[0], args.processes, self.queues)
        )
        if args.events_worker:
            env = {**self.env, "WORKER_HEARTBEAT_FILE": str(self.tmp / "events.heartbeat")}
            log = self.tmp / "events_worker.log"
            from app.config.celery_config import EVENTS_QUEUE

            self.events_worker = start_worker(self.root, env, log, 1, EVENTS_QUEUE)
        if args.beat:
            self.start_beat(self.env)
        return slugs

    def add_endpoints(self, slugs: list[str]) -> None:
        """The sink, and an endpoint for every organization there."""
        self.sink, self.sink_url, self.sink_record = start_sink(self.tmp, self.args.events_delay_ms)
        self.secrets = add_endpoints(self.pg_url, slugs, self.sink_url)
        print(
            f"events: {len(slugs)} endpoints at {self.sink_url}"
            f" answering after {self.args.events_delay_ms:g} ms"
        )

    def start_beat(self, env: dict[str, str]) -> None:
        self.beat = start_celery(self.root, ["beat", "-l", "INFO"], env, self.beat_log)

    def processes(self) -> list[subprocess.Popen[bytes]]:
        others = [p for p in (self.beat, self.events_worker) if p is not None]
        return [*self.workers, *others]

    def kill_and_recover(self, watch: Watch, backends: DatabaseBackends, cpu_before: float) -> None:
        """SIGKILL the worker with its pool children, as a container is killed; start a fresh
        worker, and beat to sweep and reconcile what the dead one left in ``sending``."""
        worker = self.workers[0]
        backends.sample()  # its backends end with it
        watch.peak_mb = max((peak_rss_mb(p) for p in proc_tree(worker.pid)[1:]), default=0.0)
        watch.dead_cpu = tree_cpu_seconds(worker.pid) - cpu_before
        os.killpg(worker.pid, signal.SIGKILL)
        watch.killed_at = time.monotonic()
        end_group(worker, signal.SIGKILL)
        print(f"killed the worker after {self.kill_after:,} texts reached the provider")
        recover = {**self.env, **BEAT_ENV}
        if self.beat is None:
            self.start_beat(recover)
        self.logs.append(self.tmp / "worker2.log")
        self.workers.append(
            start_worker(self.root, recover, self.logs[-1], self.args.processes, self.queues)
        )

    def provider_has(self, n: int) -> bool:
        if self.twilio:
            return fake_has(self.base_url, n)
        return len(console_lines(self.out)) >= n

    def sends(self) -> list[tuple[str, str, float | None, float | None]]:
        """What reached the provider (the fake writes its record as it stops)."""
        if self.fake is not None:
            stop_server(self.fake)
            return read_record(self.record)
        return [(s, to, None, None) for s, to in console_lines(self.out)]

    def stop_processes(self) -> None:
        for proc in self.processes():
            end_group(proc, signal.SIGTERM)

    def close(self, *, keep: bool | None = None) -> None:
        self.stop_processes()
        for server in (self.fake, self.sink):
            if server is not None:
                stop_server(server)
        super().close(keep=self.args.keep if keep is None else keep)


class Ledger:
    """The bench's reads of the ledger. Each is a read-only transaction ended by a rollback,
    which the rollback figure leaves out."""

    def __init__(self, pg_url: str) -> None:
        from app.db.models import Reminder
        from app.db.session import get_engine

        self.engine = get_engine(pg_url)
        self.reminder = Reminder
        self.reads = 0

    def _connect(self) -> Any:
        self.reads += 1
        return self.engine.connect()

    def count(self, *, statuses: tuple[str, ...], negate: bool = False) -> int:
        from sqlalchemy import func, select

        status = self.reminder.status
        where = status.notin_(statuses) if negate else status.in_(statuses)
        with self._connect() as conn:
            return int(conn.execute(select(func.count()).where(where)).scalar_one())

    def events(self) -> int:
        """Events the outbox holds (one delivery each: one endpoint per organization)."""
        from sqlalchemy import func, select

        from app.db.models import Event

        with self._connect() as conn:
            return int(conn.execute(select(func.count()).select_from(Event)).scalar_one())

    def unknown_ids(self) -> list[int]:
        from sqlalchemy import select

        r = self.reminder
        with self._connect() as conn:
            return list(conn.execute(select(r.id).where(r.status == "unknown")).scalars())

    def stuck(self, *, beat: bool, tmp: Path) -> str:
        """Why the run stopped moving. Without beat, rows a worker handed back to the ledger
        (deferred) wait for the sweeper for ever."""
        from sqlalchemy import func, select

        r = self.reminder
        with self._connect() as conn:
            rows = conn.execute(
                select(r.status, r.reason, func.count())
                .where(r.status.in_(("pending", "sending", "unknown")))
                .group_by(r.status, r.reason)
            ).all()
        why = ", ".join(f"{n} {status} ({reason})" for status, reason, n in rows)
        return f"{why}{'' if beat else '; --beat runs the sweeper'}; see {tmp}"

    def summary(self) -> tuple[float, dict[str, int], dict[str, int]]:
        """The sending span (first to last sent_at), the statuses, and each number's segments
        as the ledger's body counts them."""
        from sqlalchemy import func, select

        from app.domain.segments import count_segments

        r = self.reminder
        with self._connect() as conn:
            first, last = conn.execute(select(func.min(r.sent_at), func.max(r.sent_at))).one()
            statuses = {
                str(status): n
                for status, n in conn.execute(select(r.status, func.count()).group_by(r.status))
            }
            segments_of = {
                phone: count_segments(body).segments
                for phone, body in conn.execute(select(r.phone, r.body))
                if phone and body
            }
        assert first is not None and last is not None, "nothing was sent"
        return (last - first).total_seconds(), statuses, segments_of


def wait_for_kill(day: Day, ledger: Ledger) -> None:
    """Until the provider has N texts; a stall (nothing sent for 30 s) ends the run."""
    sent, changed, checked = 0, time.monotonic(), 0.0
    deadline = changed + 600
    while not day.provider_has(day.kill_after):
        now = time.monotonic()
        if day.workers[0].poll() is not None:
            sys.exit(f"the worker exited before the kill; see {day.logs[0]}")
        if now - checked > 1:  # the ledger once a second
            checked = now
            n = ledger.count(statuses=("sent",))
            if n != sent:
                sent, changed = n, now
            elif now - changed > 30:
                why = ledger.stuck(beat=day.beat is not None, tmp=day.tmp)
                sys.exit(f"stalled before the kill: nothing sent for 30 s: {why}")
        if now > deadline:
            sys.exit(f"gave up waiting for {day.kill_after:,} texts after 10 minutes")
        time.sleep(0.02)


def wait_settled(
    day: Day, ledger: Ledger, watch: Watch, backends: DatabaseBackends, start: float
) -> None:
    """Until every row is settled, polling every 0.2 s; a stall ends the run. Without beat
    nothing settles an unknown row, so the day is over once nothing is pending or sending;
    with it, once every row is final."""
    n = day.args.texts
    beat = day.beat is not None
    open_statuses = ("pending", "sending", "unknown") if beat else ("pending", "sending")
    stall_limit = 240 if beat else 30  # lease 30 s + reconciliation every 60 s, delay 30 s
    settled, progress_at = 0, time.monotonic()
    while settled < n:
        time.sleep(0.2)
        live = day.workers[-1]
        if live.poll() is not None:
            sys.exit(f"the worker exited; see {day.logs[len(day.workers) - 1]}")
        watch.peak_mb = max(watch.peak_mb, *(peak_rss_mb(p) for p in proc_tree(live.pid)[1:]), 0)
        backends.sample()
        now_settled = ledger.count(statuses=open_statuses, negate=True)
        watch.seen_unknown.update(ledger.unknown_ids())
        if (
            day.kill_after
            and not day.twilio
            and watch.all_texted is None
            and len({to for _, to in console_lines(day.out)}) >= n
        ):
            watch.all_texted = time.monotonic()
        if now_settled != settled:
            settled, progress_at = now_settled, time.monotonic()
        elif time.monotonic() - progress_at > stall_limit:
            why = ledger.stuck(beat=beat, tmp=day.tmp)
            sys.exit(f"stalled: no row settled for {stall_limit} s: {why}")
        if time.monotonic() - start > 1200:
            sys.exit(f"gave up after 20 minutes with {settled} settled")


def wait_events(day: Day, ledger: Ledger) -> None:
    """Until the sink has every event the outbox holds; a stall (none arrived for 60 s: more
    than a 2 s beat tick and a delivery task's 20 s budget) ends the wait, which says so."""
    from event_sink import distinct

    arrived, progress_at = -1, time.monotonic()
    while True:
        now_arrived = distinct(day.sink_url)
        if now_arrived >= ledger.events():
            return
        if now_arrived != arrived:
            arrived, progress_at = now_arrived, time.monotonic()
        elif time.monotonic() - progress_at > 60:
            print(
                f"events stalled: {arrived:,} of {ledger.events():,} arrived, none for 60 s"
                + ("" if day.beat else " (no beat: only the workers' kicks deliver)")
            )
            return
        time.sleep(0.2)


def figures(
    day: Day,
    got: Delivery,
    *,
    before: Counters,
    after: Counters,
    stats: dict[str, int],
    wal_bytes: float,
    db_wal_bytes: float | None,
    elapsed: float,
    window: float,
    send_span: float,
    statuses: dict[str, int],
    segments_of: dict[str, int],
) -> dict[str, Any]:
    """Every figure but the ones of the processes the run watched (worker, beat, this
    database's backends, the kill), per text where it says so."""
    sent = statuses.get("sent", 0)
    n_segments = sum(segments_of.values())
    calls = {
        k: after.redis_calls.get(k, 0) - before.redis_calls.get(k, 0) for k in after.redis_calls
    }
    scripts = calls.get("evalsha", 0) + calls.get("eval", 0)
    # Redis counts the commands a script runs as commands too. The limiter's Lua runs TIME once
    # and a GET and (when it books) a SET per sender it books for; nothing else in a run sends
    # TIME, GET or SET (the broker uses lists, no result is stored): so all of them are the
    # script's. (Before the limiter booked many senders in one call, each was capped at the
    # script count; in those runs both ways give the same figure.)
    limiter = scripts + sum(calls.get(c, 0) for c in ("time", "get", "set"))
    redis_total = after.redis_total - before.redis_total
    top = sorted(((v, k) for k, v in calls.items() if v), reverse=True)[:6]
    busy = after.busy - before.busy
    return {
        "texts": day.args.texts,
        "sent": sent,
        "segments_per_text": per(n_segments, len(segments_of)),
        "senders": len(day.senders),
        "rate": day.rate,
        "end_to_end_s": elapsed,
        "sending_s": send_span,
        "texts_per_s_end_to_end": per(sent, elapsed),
        "texts_per_s_sending": per(sent, send_span),
        "segments_per_s_sending": per(n_segments, send_span),
        "slots_used": per(n_segments, send_span * len(day.senders) * day.rate),
        "cpu_ms_postgres": per((after.postgres - before.postgres) * 1000, sent),
        "cpu_ms_redis": per((after.redis - before.redis) * 1000, sent),
        "cpu_ms_fake": per((after.fake - before.fake) * 1000, sent),
        "cpu_ms_bench": per((after.bench - before.bench) * 1000, sent),
        "cpu_ms_machine": per(busy * 1000, sent),
        "machine_busy_s": busy,
        "machine_cores": per(busy, window),
        "pg_ins_per_text": per(stats["ins"], sent),
        "pg_upd_per_text": per(stats["upd"], sent),
        "pg_hot_upd_per_text": per(stats["hot_upd"], sent),
        "pg_commits_per_text": per(stats["xact_commit"], sent),
        "pg_rollbacks_per_text": per(stats["xact_rollback"], sent),
        "pg_wal_bytes_per_text": per(wal_bytes if db_wal_bytes is None else db_wal_bytes, sent),
        "pg_wal_cluster_bytes_per_text": per(wal_bytes, sent),
        "redis_commands_per_text": per(redis_total, sent),
        "redis_scripts_per_text": per(scripts, sent),
        "redis_bookings_per_text": per(calls.get("get", 0), sent),  # one GET per sender booked
        "redis_limiter_per_text": per(limiter, sent),
        "redis_other_per_text": per(redis_total - limiter, sent),
        "redis_top": ", ".join(f"{k} {per(v, sent):.2f}" for v, k in top),
        "busiest_texts": got.busiest_texts,
        "busiest_segments": got.busiest_segments,
        "busiest_ratio": got.busiest_segments / day.rate,
        "senders_over": got.senders_over,
        "busiest_read_segments": got.busiest_read_segments,
        "delivered": got.texts,
        "missed": got.missed,
        "duplicates": got.duplicates,
        "unknown_numbers": got.unknown_numbers,
        "ledger": statuses,
        "delivery_ok": got.once and sent == day.args.texts and not got.unknown_senders,
    }


def events_figures(day: Day, *, sent: int, drain_s: float) -> dict[str, Any]:
    """What the sink received (read once it stopped), against the ledger's sent rows."""
    from event_sink import verify

    assert day.sink is not None
    stop_server(day.sink)
    got = verify(day.sink_record, day.secrets)
    return {
        "events_drain_s": drain_s,
        "events_received": got.distinct,
        "events_sent_received": got.by_type["message.sent"],
        "events_repeated": got.repeated,
        "events_bad_signatures": got.bad_signatures,
        "events_types": dict(sorted(got.by_type.items())),
        "events_ok": got.by_type["message.sent"] == sent and not got.bad_signatures,
    }


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(args.root))
    day = Day(args)
    ok = False
    try:
        slugs = day.start()
        from app.tasks.client import enqueue_day

        ledger = Ledger(day.pg_url)
        rconn = redis.Redis.from_url(f"{REDIS_BASE}/0")
        fake_pid = day.fake.pid if day.fake else 0
        stats_before = table_stats(day.admin, day.pg_url, day.name)
        keep_wal(day.admin, day.name)
        backends = DatabaseBackends(day.name)
        backends.start()
        before = read_counters(day.admin, rconn, fake_pid)
        worker_before = tree_cpu_seconds(day.workers[0].pid)
        beat_before = tree_cpu_seconds(day.beat.pid) if day.beat else 0.0
        events_worker = day.events_worker.pid if day.events_worker else 0
        events_before = tree_cpu_seconds(events_worker) if events_worker else 0.0
        watch = Watch()
        start = time.monotonic()
        enqueue_day(on_date=None, org_slugs=slugs)
        if day.kill_after:
            wait_for_kill(day, ledger)
            day.kill_and_recover(watch, backends, worker_before)
            worker_before = 0.0
        wait_settled(day, ledger, watch, backends, start)
        finished = time.monotonic()
        if args.events:
            wait_events(day, ledger)
        drained = time.monotonic()
        backends.sample()
        after = read_counters(day.admin, rconn, fake_pid)
        worker_cpu = watch.dead_cpu + tree_cpu_seconds(day.workers[-1].pid) - worker_before
        beat_cpu = tree_cpu_seconds(day.beat.pid) - beat_before if day.beat else 0.0
        events_cpu = tree_cpu_seconds(events_worker) - events_before if events_worker else 0.0
        send_span, statuses, segments_of = ledger.summary()
        # Stopped workers' backends flush their counters as they exit.
        day.stop_processes()
        ledger.engine.dispose()
        stats_after = table_stats(day.admin, day.pg_url, day.name)
        got = delivery(
            day.sends(), n=args.texts, senders=day.senders, rate=day.rate, segments_of=segments_of
        )
        if day.kill_after and day.twilio and len(got.first_texted) >= args.texts:
            watch.all_texted = max(got.first_texted.values())
        wal = day.admin.execute(
            "SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (after.wal_lsn, before.wal_lsn)
        ).fetchone()
        assert wal is not None
        db_wal = database_wal_bytes(day.admin, day.name, before.wal_lsn, after.wal_lsn)
        free_wal(day.admin, day.name)
        stats = {k: stats_after[k] - stats_before[k] for k in stats_after}
        # Each of the bench's reads ends in a rollback (read-only), the stats read's too.
        stats["xact_rollback"] = max(stats["xact_rollback"] - ledger.reads - 1, 0)
        f = figures(
            day,
            got,
            before=before,
            after=after,
            stats=stats,
            wal_bytes=float(wal[0]),
            db_wal_bytes=db_wal,
            elapsed=finished - start,
            window=drained - start,  # the counters' (with --events, until every event arrived)
            send_span=send_span,
            statuses=statuses,
            segments_of=segments_of,
        )
        f["cpu_ms_worker"] = per(worker_cpu * 1000, f["sent"])
        f["cpu_ms_beat"] = per(beat_cpu * 1000, f["sent"])
        f["cpu_ms_events_worker"] = per(events_cpu * 1000, f["sent"])
        f["cpu_ms_postgres_db"] = per(backends.seconds() * 1000, f["sent"])
        f["worker_peak_mb"] = watch.peak_mb
        if args.events:
            f.update(events_figures(day, sent=f["sent"], drain_s=drained - finished))
        if day.kill_after:
            logged = from_logs([*day.logs, day.beat_log])
            f.update(
                kill_after=day.kill_after,
                reconciled_rows=len(watch.seen_unknown),
                swept_rows=logged.get("swept", 0),
                reconcile_sent=logged.get("reconcile_sent", 0),
                reconcile_retried=logged.get("reconcile_retried", 0),
                kill_to_all_texted_s=watch.all_texted - watch.killed_at if watch.all_texted else -1,
                kill_to_all_sent_s=finished - watch.killed_at,
            )
        segments_ok = set(segments_of.values()) == {args.segments}
        ok = f["delivery_ok"] and segments_ok and not (day.twilio and got.senders_over)
        ok = ok and f.get("events_ok", True)
        f["ok"] = ok
        parts = ("bench", "fake", "postgres", "redis")
        ours = worker_cpu + beat_cpu + events_cpu
        ours += sum(getattr(after, k) - getattr(before, k) for k in parts)
        outside = after.busy - before.busy - ours
        f["cpu_ms_outside"] = per(outside * 1000, f["sent"])
        print_block(f, twilio=day.twilio, kill=bool(day.kill_after))
        if outside > 0.2 * (after.busy - before.busy):
            print(
                f"note: {outside:.1f} s of the machine's CPU went to processes outside this run;"
                " the machine, all-postgres, Redis and WAL figures include whatever they did"
            )
        if not segments_ok:
            counts = dict(Counter(segments_of.values()))
            print(f"segments per text: {counts}, wanted {args.segments} each")
        if got.unknown_senders:
            print(f"unexpected senders: {got.unknown_senders}")
        if day.kill_after and not day.twilio and got.duplicates:
            print(
                "the console provider cannot be asked what it sent: the rows a dead worker left"
                " in sending go back to pending, and those it had written are written again"
            )
        if watch.seen_unknown and not day.kill_after:
            print(f"{len(watch.seen_unknown)} rows were unknown at some point (provider timeouts?)")
        if not ok:
            print("CHECKS FAILED")
        if args.json:
            numbers = {k: v for k, v in f.items() if not isinstance(v, dict | str)}
            print(json.dumps(numbers, sort_keys=True))
    finally:
        day.close()
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()

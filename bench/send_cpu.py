"""Benchmark: CPU of one process planning and sending a day, without Celery or HTTP.

Plans N texts on a fresh PostgreSQL database and sends them through the engine's Sender in
batches of 1,000 with a provider that answers after ``--latency-ms`` on the event loop (as the
Twilio adapter does, without HTTP) and, with ``--rate``, each of ``--senders`` senders paced by
the in-process limiter, then prints the process CPU per text of each part.
It isolates the engine's own cost (claim, checks, rendering, outcome
writes) from the broker's and the provider's: run it from two checkouts, alternating, to
compare commits.

    .venv/bin/python bench/send_cpu.py [--texts 5000] [--latency-ms 100] [--rate 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
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
from app.services.ratelimit import LocalRateLimiter  # noqa: E402
from tests.factories import (  # noqa: E402
    RecordingProvider,
    add_subscription,
    make_org,
    make_sender,
)


class AsyncProvider(RecordingProvider):
    """Answers on the event loop after a delay, like the Twilio adapter minus HTTP."""

    latency: float = 0.0

    async def send_async(
        self,
        to: str,
        body: str,
        sender: str | None,
        *,
        valid_for: int | None = None,
        send_by: float | None = None,
    ) -> str:
        await asyncio.sleep(self.latency)
        self.sent.append((to, body, sender))
        return f"SM{len(self.sent):032d}"


ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's threads, by thread name (summed over a name)."""
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name.split("_")[0] for t in threading.enumerate()}
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(task.name), "other")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=5000)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--rate", type=float, default=0.0, help="segments/s per sender (0: none)")
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=256, help="SMS_CONCURRENCY")
    args = parser.parse_args()
    n = args.texts
    name = f"bench_cpu_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(ADMIN, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade(url)
        engine = get_engine(url)
        orgs = [
            make_org(
                engine,
                f"org{k}",
                now=utcnow(),
                send_window="00:00-00:00",
                sender=f"+1500555{k:04d}",
                **({"rate": args.rate} if args.rate else {}),
            )
            for k in range(args.senders)
        ]
        expires = utcnow().date() + timedelta(days=3)
        for i in range(n):
            add_subscription(
                engine,
                orgs[i % len(orgs)],
                expires_on=expires,
                phone=f"+1415{2_000_000 + i}",
                ext=f"{i}",
            )
        provider = AsyncProvider()
        provider.latency = args.latency_ms / 1000
        sender = make_sender(engine, provider, send_concurrency=args.concurrency)
        if args.rate:
            sender.limiter = LocalRateLimiter()
        t0 = time.process_time()
        with engine.begin() as conn:
            plan_day(conn, now=utcnow(), orgs=load_orgs(conn), render=False)
        t1 = time.process_time()
        with engine.connect() as conn:
            ids = ledger.due_ids(conn, now=utcnow(), limit=n)
        before = thread_cpu()
        w0 = time.monotonic()
        batches = [sender.submit_ids(ids[i : i + 1000]) for i in range(0, len(ids), 1000)]
        sent = sum(b.result().sent for b in batches)
        t2 = time.process_time()
        wall = time.monotonic() - w0
        by_thread = {k: v - before.get(k, 0.0) for k, v in thread_cpu().items()}
        sender.close()
        print(f"texts sent:     {sent:,} of {n:,}")
        allowed = args.rate * args.senders
        share = f" = {sent / wall / allowed:.1%} of {allowed:,.0f}/s allowed" if allowed else ""
        print(f"send wall:      {wall:.1f} s = {sent / wall:,.0f} texts/s{share}")
        print(f"plan CPU:       {1e3 * (t1 - t0) / n:.3f} ms per text")
        print(f"send CPU:       {1e3 * (t2 - t1) / n:.3f} ms per text")
        for name, cpu in sorted(by_thread.items(), key=lambda kv: -kv[1]):
            if cpu > 0:
                print(f"  {name:<16} {1e3 * cpu / n:.3f} ms per text")
    finally:
        dispose_engines()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    main()

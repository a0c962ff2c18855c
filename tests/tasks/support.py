"""Real Celery processes for the worker tests, started with the production command.

Each process runs in its own session (process group), so a test can SIGKILL a worker together
with its pool children, the way a container is killed, and nothing is left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import fields
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select

from app.db.models import Customer, Reminder, Subscription
from app.settings import Settings
from tests.twilio_fake import FakeTwilio

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).with_name("celery"))


def worker_env(
    *, pg_url: str, broker: str, redis_url: str, tmp: Path, **extra: str
) -> dict[str, str]:
    """The environment a production worker would get, pointed at this run's servers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "REDIS_", "SMS_"))}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": pg_url,
            "CELERY_BROKER_URL": broker,
            "REDIS_URL": redis_url,
            "SMS_PROVIDER": "console",
            "SMS_CONSOLE_OUTPUT": str(tmp / "sms.txt"),
            "SMS_RATE_PER_SECOND": "100000",
            "SMS_CONCURRENCY": "8",
            "SMS_BATCH_SIZE": "50",
            "WORKER_HEARTBEAT_FILE": str(tmp / "worker.heartbeat"),
            "BEAT_HEARTBEAT_FILE": str(tmp / "beat.heartbeat"),
            "LOG_LEVEL": "INFO",
        }
    )
    env.update(extra)
    return env


class Proc:
    """One celery process (worker or beat) and its log file."""

    def __init__(self, args: list[str], env: Mapping[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("ab")
        self.popen = subprocess.Popen(
            [CELERY, "-A", "app.tasks.scheduler", *args],
            cwd=ROOT,
            env=dict(env),
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL the whole process group: the worker and its pool children die at once."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)
        _reap_group(self.popen.pid)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (warm shutdown), then SIGKILL if it does not end in time."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=30)
        _reap_group(self.popen.pid)
        self._out.close()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def _reap_group(pgid: int) -> None:
    """Pool children outliving their parent are in the same group: make sure they are gone."""
    with suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def wait_for(check: Callable[[], bool], *, timeout: float, what: str, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


@contextmanager
def worker(
    env: Mapping[str, str],
    tmp: Path,
    *,
    name: str = "w1",
    concurrency: int = 2,
    extra: list[str] | None = None,
) -> Iterator[Proc]:
    """A worker started like production; yields once it reported ready (heartbeat file)."""
    beat_file = Path(env["WORKER_HEARTBEAT_FILE"])
    beat_file.unlink(missing_ok=True)
    args = [
        "worker",
        "--pool",
        "prefork",
        "-c",
        str(concurrency),
        "-l",
        "INFO",
        "-n",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
        *(extra or []),
    ]
    proc = Proc(args, env, tmp / f"{name}.log")
    try:
        wait_for(
            lambda: beat_file.exists() or proc.popen.poll() is not None,
            timeout=60,
            what=f"worker {name} to start",
        )
        assert proc.popen.poll() is None, f"worker {name} exited:\n{proc.text()[-3000:]}"
        yield proc
    finally:
        proc.stop()


def sent_counts(path: Path) -> Counter[str]:
    """Provider calls per phone number, from the console (or fake) provider's output file."""
    if not path.exists():
        return Counter()
    return Counter(line.split("\t")[2] for line in path.read_text().splitlines() if line)


def status_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(Reminder.status, func.count()).group_by(Reminder.status))
        return {status: int(n) for status, n in rows}


def seed_due(engine: Engine, org_id: int, n: int, *, today: date, start: int = 0) -> list[str]:
    """``n`` customers whose subscriptions expire in 3 days (one reminder each); their phones."""
    phones = [f"+1202{7000000 + start + i:07d}" for i in range(n)]
    with engine.begin() as conn:
        ids = conn.execute(
            insert(Customer).returning(Customer.id, sort_by_parameter_order=True),
            [
                {
                    "org_id": org_id,
                    "external_id": f"c{start + i}",
                    "name": f"Customer {start + i}",
                    "phone": phone,
                    "phone_e164": phone,
                }
                for i, phone in enumerate(phones)
            ],
        ).scalars()
        conn.execute(
            insert(Subscription),
            [
                {
                    "org_id": org_id,
                    "customer_id": cid,
                    "external_id": f"s{start + i}",
                    "plan": "Fiber",
                    "expires_on": today + timedelta(days=3),
                    "status": "active",
                }
                for i, cid in enumerate(ids)
            ],
        )
    return phones


@contextmanager
def beat(env: Mapping[str, str], tmp: Path, *, name: str = "beat") -> Iterator[Proc]:
    """``celery beat`` as in production (schedule in memory: nothing written to disk)."""
    proc = Proc(["beat", "-l", "INFO"], env, tmp / f"{name}.log")
    try:
        yield proc
    finally:
        proc.stop()


def twilio_env(fake: FakeTwilio, **overrides: Any) -> dict[str, str]:
    """``SMS_PROVIDER=twilio`` pointed at this fake: its settings, as the variables that set them.

    ``overrides`` are settings fields (``twilio_timeout_seconds=10.0``).
    """
    settings = fake.settings(**overrides)
    return {
        f.metadata["env"]: str(getattr(settings, f.name))
        for f in fields(Settings)
        if (f.name == "sms_provider" or f.name.startswith("twilio_"))
        and getattr(settings, f.name) is not None
    }


def most_in_one_second(moments: Iterable[float]) -> int:
    """The most of these moments (in seconds) inside any half-open window [t, t + 1)."""
    ordered = sorted(moments)
    best, lo = 0, 0
    for hi, t in enumerate(ordered):
        while t - ordered[lo] >= 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """An AMQP URL for a virtual host of its own on the local RabbitMQ, deleted afterwards.

    Skips the test when RabbitMQ is not listening on 127.0.0.1:5672 or rabbitmqctl is missing.
    """
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError:
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672")
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is missing")
    vhost = f"reminders-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, timeout=60)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        timeout=60,
    )
    try:
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False, timeout=60)

"""The same day end to end with RabbitMQ as the broker (Redis keeps the rate limit and results).

Each run gets its own virtual host, so parallel runs never share a queue.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from app.domain.planning import utcnow
from tests.factories import make_org
from tests.tasks.support import (
    CELERY,
    ROOT,
    seed_due,
    sent_counts,
    status_counts,
    wait_for,
    worker,
    worker_env,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _rabbitmq_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError:
        return False
    return shutil.which("rabbitmqctl") is not None


@pytest.fixture
def amqp_url() -> Iterator[str]:
    if not _rabbitmq_up():
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672 (or rabbitmqctl is missing)")
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


@pytest.mark.timeout(300)
def test_a_day_goes_out_through_rabbitmq(
    pg_engine: Engine, pg_url: str, broker: str, amqp_url: str, tmp_path: Path
) -> None:
    org = make_org(pg_engine, "acme", now=utcnow(), send_window="00:00-00:00")
    phones = seed_due(pg_engine, org, 200, today=utcnow().date())
    env = worker_env(pg_url=pg_url, broker=amqp_url, redis_url=broker, tmp=tmp_path)
    with worker(env, tmp_path):
        # The operator's way in: `celery call` with the task's registered name.
        subprocess.run(
            [
                CELERY,
                "-A",
                "app.tasks.scheduler",
                "call",
                "app.tasks.scheduler.send_payment_reminder_sms",
                "--kwargs",
                '{"org": "acme"}',
            ],
            cwd=ROOT,
            env=env,
            check=True,
            timeout=60,
            capture_output=True,
        )
        wait_for(lambda: status_counts(pg_engine) == {"sent": 200}, timeout=90, what="all sent")
    calls = sent_counts(tmp_path / "sms.txt")
    assert set(calls) == set(phones) and set(calls.values()) == {1}

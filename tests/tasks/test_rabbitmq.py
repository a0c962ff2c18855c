"""The same day end to end with RabbitMQ as the broker (Redis keeps the rate limit and results).

Each run gets its own virtual host, so parallel runs never share a queue.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from app.domain.planning import utcnow
from tests.factories import make_org
from tests.tasks.support import (
    CELERY,
    ROOT,
    rabbitmq_vhost,
    seed_due,
    sent_counts,
    status_counts,
    wait_for,
    worker,
    worker_env,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture
def amqp_url() -> Iterator[str]:
    with rabbitmq_vhost() as url:
        yield url


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

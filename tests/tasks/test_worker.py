"""A real worker, started with the production command, sends a day handed over through Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import Engine

from app.domain.planning import utcnow
from app.tasks.client import enqueue_day, wait_day
from tests.factories import make_org
from tests.tasks.support import seed_due, sent_counts, status_counts, worker

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_worker_sends_a_day_enqueued_through_redis(
    pg_engine: Engine, celery_app: Celery, env: dict[str, str], tmp_path: Path
) -> None:
    org = make_org(pg_engine, "acme", now=utcnow(), send_window="00:00-00:00")
    phones = seed_due(pg_engine, org, 300, today=utcnow().date())
    with worker(env, tmp_path):
        task_id = enqueue_day(on_date=None, org_slugs=["acme"])
        counts = wait_day(task_id, on_date=None, org_slugs=["acme"], timeout=90)
    assert counts["planned"] == 300
    assert counts["sent"] == 300
    assert status_counts(pg_engine) == {"sent": 300}
    calls = sent_counts(tmp_path / "sms.txt")
    assert set(calls) == set(phones)
    assert set(calls.values()) == {1}

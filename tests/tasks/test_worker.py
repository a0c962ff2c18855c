"""A real worker, started with the production command, sends a day handed over through Redis."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from celery import Celery
from celery.result import AsyncResult
from sqlalchemy import Engine, update

from app.db.models import Reminder
from app.domain.planning import utcnow
from app.tasks.client import enqueue_day, wait_day
from tests.factories import make_org
from tests.ledger_rows import make_row
from tests.tasks.support import seed_due, sent_counts, status_counts, wait_for, worker

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


def test_a_day_of_several_pages_hands_every_row_over_once(
    pg_engine: Engine, celery_app: Celery, env: dict[str, str], tmp_path: Path
) -> None:
    """Pages are sent while the next is planned; an earlier day's row waiting without a message
    in the broker goes too; no row gets a second message."""
    now = utcnow()
    orgs = [make_org(pg_engine, slug, now=now, send_window="00:00-00:00") for slug in ("n", "s")]
    phones = []
    for k, org in enumerate(orgs):  # 6,000 rows: two planning pages
        phones += seed_due(pg_engine, org, 3000, today=now.date(), start=k * 3000)
    waiting = make_row(pg_engine, orgs[0], phone="+12025550199", today=now.date() - timedelta(1))
    with pg_engine.begin() as conn:
        an_hour_ago = now - timedelta(hours=1)
        conn.execute(
            update(Reminder)
            .where(Reminder.id == waiting)
            .values(next_attempt_at=an_hour_ago, updated_at=an_hour_ago)
        )
    env.update(SMS_BATCH_SIZE="500")
    with worker(env, tmp_path) as w:
        task_id = enqueue_day(on_date=None, org_slugs=["n", "s"])
        result = AsyncResult(task_id, app=celery_app).get(timeout=120)
        wait_for(lambda: status_counts(pg_engine) == {"sent": 6001}, timeout=120, what="all sent")
    assert (result["planned"], result["enqueued"]) == (6000, 6001)
    calls = sent_counts(tmp_path / "sms.txt")
    assert set(calls) == {*phones, "+12025550199"} and set(calls.values()) == {1}
    not_claimed = re.findall(r"batch of \d+: .* not-claimed=(\d+)", w.text())
    assert len(not_claimed) == 13 and set(not_claimed) == {"0"}

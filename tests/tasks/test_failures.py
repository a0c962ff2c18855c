"""Failures a worker must survive without texting anyone twice or not at all."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import Engine, select

from app.db.models import DailyRun, Reminder
from app.domain.planning import utcnow
from app.tasks.client import enqueue_day
from app.tasks.scheduler import reconcile_unknown
from tests.factories import make_org
from tests.tasks.support import beat, seed_due, sent_counts, status_counts, wait_for, worker

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

FAKE = ["--sms-provider-factory", "tests.tasks.fakes:scripted"]


def _all_sent(engine: Engine, n: int) -> bool:
    return status_counts(engine) == {"sent": n}


@pytest.mark.timeout(300)
def test_sigkill_mid_day_then_a_new_worker_sends_every_text_once(
    pg_engine: Engine, celery_app: Celery, env: dict[str, str], tmp_path: Path
) -> None:
    n = 3000
    org = make_org(pg_engine, "acme", now=utcnow(), send_window="00:00-00:00")
    phones = seed_due(pg_engine, org, n, today=utcnow().date())
    out = tmp_path / "sms.txt"
    # 600 texts/s across all processes (the Redis rate limit): the day takes about 5 s.
    env.update(
        SMS_RATE_PER_SECOND="600",
        REMINDER_STALE_SENDING_SECONDS="5",
        REMINDER_TICK_SECONDS="1",
    )
    with worker(env, tmp_path, name="doomed", extra=FAKE) as doomed:
        enqueue_day(on_date=None, org_slugs=["acme"])
        wait_for(lambda: len(sent_counts(out)) >= 600, timeout=60, what="sends to begin")
        doomed.kill()
    at_kill = sum(sent_counts(out).values())
    assert at_kill < n, "the worker finished before it was killed; make the day larger"
    with worker(env, tmp_path, name="heir", extra=FAKE), beat(env, tmp_path):
        # Rows the dead worker had claimed are unknown outcomes: reconciliation asks the
        # provider (here: its output file). The beat entry runs every minute; call it sooner.
        deadline = time.monotonic() + 150
        while not _all_sent(pg_engine, n):
            assert time.monotonic() < deadline, f"not all sent: {status_counts(pg_engine)}"
            reconcile_unknown.apply_async(kwargs={"safe_delay_seconds": 0})
            time.sleep(2)
    calls = sent_counts(out)
    assert set(calls) == set(phones)
    assert max(calls.values()) == 1, [p for p, c in calls.items() if c > 1][:5]


@pytest.mark.timeout(300)
def test_daily_run_started_twice_and_two_beats_send_each_text_once(
    pg_engine: Engine, celery_app: Celery, env: dict[str, str], tmp_path: Path
) -> None:
    n = 400
    org = make_org(pg_engine, "acme", now=utcnow(), send_time="00:00", send_window="00:00-00:00")
    phones = seed_due(pg_engine, org, n, today=utcnow().date())
    env.update(REMINDER_TICK_SECONDS="1")
    with (
        worker(env, tmp_path, concurrency=2),
        beat(env, tmp_path, name="beat1"),
        beat(env, tmp_path, name="beat2"),
    ):
        ids: list[str] = []
        starters = [
            threading.Thread(target=lambda: ids.append(enqueue_day(on_date=None, org_slugs=[])))
            for _ in range(2)
        ]
        for t in starters:
            t.start()
        for t in starters:
            t.join()
        wait_for(lambda: _all_sent(pg_engine, n), timeout=90, what="every text sent")
        time.sleep(3)  # a few more ticks of both beats
        beat_file = Path(env["BEAT_HEARTBEAT_FILE"])
        assert time.time() - beat_file.stat().st_mtime < 5
        assert time.time() - Path(env["WORKER_HEARTBEAT_FILE"]).stat().st_mtime < 10
    assert len(set(ids)) == 2
    calls = sent_counts(tmp_path / "sms.txt")
    assert set(calls) == set(phones) and set(calls.values()) == {1}
    with pg_engine.connect() as conn:
        runs = conn.execute(select(DailyRun.org_id, DailyRun.status)).all()
    assert len(runs) == 1 and runs[0][0] == org


@pytest.mark.timeout(300)
def test_transient_permanent_and_exhausted_failures(
    pg_engine: Engine, celery_app: Celery, env: dict[str, str], tmp_path: Path
) -> None:
    org = make_org(pg_engine, "acme", now=utcnow(), send_window="00:00-00:00")
    flaky, bad, hopeless, fine = seed_due(pg_engine, org, 4, today=utcnow().date())
    script = {
        flaky: ["transient", "transient", "transient", "ok"],
        bad: ["permanent"],
        hopeless: ["transient"],
    }
    (tmp_path / "sms.txt.script.json").write_text(json.dumps(script))
    env.update(SMS_MAX_ATTEMPTS="5", SMS_RETRY_BACKOFF_SECONDS="0.2")
    with worker(env, tmp_path, extra=FAKE):
        enqueue_day(on_date=None, org_slugs=["acme"])
        wait_for(
            lambda: sum(status_counts(pg_engine).get(s, 0) for s in ("sent", "failed")) == 4,
            timeout=90,
            what="every row settled",
        )
    with pg_engine.connect() as conn:
        rows = {
            r.phone: r
            for r in conn.execute(
                select(
                    Reminder.phone,
                    Reminder.status,
                    Reminder.attempts,
                    Reminder.reason,
                    Reminder.error_code,
                    Reminder.error_message,
                )
            )
        }
    assert (rows[flaky].status, rows[flaky].attempts) == ("sent", 4)
    assert (rows[fine].status, rows[fine].attempts) == ("sent", 1)
    assert (rows[bad].status, rows[bad].attempts, rows[bad].error_code) == ("failed", 1, "P400")
    assert rows[hopeless].status == "failed" and rows[hopeless].attempts == 5
    assert rows[hopeless].reason == "retries_exhausted"
    assert rows[hopeless].error_message == "scripted transient failure #5"
    calls = sent_counts(tmp_path / "sms.txt")
    assert calls == {flaky: 1, fine: 1}

"""The metrics as Prometheus gets them: scraped over HTTP from a real worker (two prefork pool
processes, WORKER_METRICS_PORT) and a real ``reminders serve`` while beat runs a day through
the Twilio double, some numbers refused with Twilio error codes. What the scrapes say is
checked against the ledger and against what the double accepted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import redis
import requests
from sqlalchemy import Engine, func, select

from app.db.models import DailyRun, Reminder
from app.domain.planning import utcnow
from app.domain.status import Status
from tests.factories import make_org
from tests.metrics.exposition import Samples, labels, samples, total
from tests.serving import free_port, serve
from tests.tasks.support import beat, seed_due, twilio_env, worker, worker_env
from tests.twilio_fake import FakeTwilio

# Real worker processes: in the xdist group that runs them one after another (tests/conftest.py).
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.xdist_group("workers")]

N = 120
# Twilio refuses these numbers for good: 21211 (invalid 'To'), 21408 (region not enabled).
REFUSED = {"21211": range(0, 9), "21408": range(9, 13)}


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio(delay=0.05) as server:
        yield server


def scrape(url: str) -> Samples:
    answer = requests.get(url, timeout=10)
    assert answer.status_code == 200, answer.text
    return samples(answer.text)


def ledger_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(Reminder.status, func.count()).group_by(Reminder.status))
        return {status: int(n) for status, n in rows}


def failed_by_code(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Reminder.error_code, func.count())
            .where(Reminder.status == Status.FAILED.value)
            .group_by(Reminder.error_code)
        )
        return {str(code): int(n) for code, n in rows}


def finished_day(engine: Engine) -> tuple[datetime, datetime] | None:
    """When the (only) day started and finished, once it has finished."""
    with engine.connect() as conn:
        row = conn.execute(
            select(DailyRun.started_at, DailyRun.finished_at).where(
                DailyRun.finished_at.is_not(None)
            )
        ).first()
    return (row.started_at, row.finished_at) if row else None


@pytest.mark.timeout(300)
def test_a_days_metrics_scraped_from_a_worker_and_the_api_match_the_ledger(
    pg_engine: Engine, pg_url: str, redis_url: str, tmp_path: Path, fake: FakeTwilio
) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    org = make_org(pg_engine, "acme", now=utcnow(), send_time="00:00", send_window="00:00-00:00")
    phones = seed_due(pg_engine, org, N, today=utcnow().date())
    for code, which in REFUSED.items():
        for i in which:
            fake.fail(phones[i], int(code))
    port = free_port()
    env = worker_env(pg_url=pg_url, broker=redis_url, redis_url=redis_url, tmp=tmp_path)
    env.update(
        twilio_env(fake),
        WORKER_METRICS_PORT=str(port),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "multiproc"),
        SMS_RATE_PER_SECOND="30",  # about 4 s of sending: time to scrape during the day
        SMS_BATCH_SIZE="10",
        REMINDER_TICK_SECONDS="1",
    )
    api_env = {"DATABASE_URL": pg_url, "REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url}
    worker_url = f"http://127.0.0.1:{port}/metrics"
    during: list[tuple[Samples, Samples]] = []
    with (
        serve(api_env, tmp_path) as api,
        worker(env, tmp_path, concurrency=2),
        beat(env, tmp_path),
    ):
        deadline = time.monotonic() + 150
        while finished_day(pg_engine) is None:
            assert time.monotonic() < deadline, f"day not finished: {ledger_counts(pg_engine)}"
            during.append((scrape(api.base + "/metrics"), scrape(worker_url)))
            time.sleep(0.25)
        after_api, after_worker = scrape(api.base + "/metrics"), scrape(worker_url)

    acme = labels(organization="acme")
    rows = "reminders_ledger_rows"
    sent = {"outcome": "sent", "error_code": ""}
    # During the day: some scrapes caught it part-way, and the worker's counter only went up.
    rows_sent = [a[(rows, labels(organization="acme", status="sent"))] for a, _ in during]
    assert any(0 < n < N - 13 for n in rows_sent), rows_sent
    counted = [total(w, "reminders_texts_total", **sent) for _, w in during]
    assert counted == sorted(counted)

    # After it: the API's gauges are the ledger's counts, status by status.
    ledger = ledger_counts(pg_engine)
    assert ledger == {"sent": N - 13, "failed": 13}
    for status in Status:
        got = after_api[(rows, labels(organization="acme", status=status.value))]
        assert got == ledger.get(status.value, 0), status
    day = finished_day(pg_engine)
    assert day is not None
    stamps = [
        after_api[(f"reminders_day_{event}_timestamp_seconds", acme)]
        for event in ("started", "completed")
    ]
    assert stamps == pytest.approx([day[0].timestamp(), day[1].timestamp()])
    assert after_api[("reminders_unknown_rows", acme)] == 0
    assert after_api[("reminders_due_oldest_age_seconds", acme)] == 0

    # The worker's counters, added up over both pool processes: every text sent is a row sent
    # and a message Twilio accepted; each refusal is counted under its error code.
    assert total(after_worker, "reminders_texts_total", **sent) == ledger["sent"]
    assert len(fake.messages) == ledger["sent"]
    refused = {
        dict(got)["error_code"]: value
        for (name, got), value in after_worker.items()
        if name == "reminders_texts_total" and dict(got)["outcome"] == "failed"
    }
    assert refused == failed_by_code(pg_engine) == {"21211": 9, "21408": 4}
    # One latency observation per request the double answered.
    posts = sum(1 for method, _, _ in fake.requests if method == "POST")
    assert total(after_worker, "reminders_provider_request_seconds_count") == posts == N
    assert total(after_worker, "reminders_batch_seconds_count") > 0

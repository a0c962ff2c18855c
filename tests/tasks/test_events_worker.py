"""Outbound events with real Celery processes: a day's events reach a host whose endpoint fails
for a while, and a worker killed in the middle of delivering loses none."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from celery import Celery
from sqlalchemy import Engine, func, select

from app.db import ledger
from app.db.models import Event, EventDelivery
from app.domain.planning import utcnow
from app.services import events as event_service
from app.services.api_keys import create_key
from app.settings import Settings
from app.tasks.client import enqueue_day
from tests.event_receiver import receiver
from tests.factories import make_org
from tests.serving import serve
from tests.tasks.support import beat, seed_due, status_counts, wait_for, worker

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _endpoint(engine: Engine, url: str, types: str | None = None) -> str:
    with engine.begin() as conn:
        made = event_service.add_endpoint(
            conn,
            "acme",
            url,
            types=types,
            settings=Settings(events_allow_private=True),
            now=utcnow(),
        )
    assert made.secret is not None
    return made.secret


@pytest.mark.timeout(240)
def test_a_days_events_all_arrive_once_by_id_after_the_endpoint_failed_for_a_while(
    pg_engine: Engine, celery_app: Celery, env: dict[str, str], tmp_path: Path
) -> None:
    n = 60
    # The day is the scheduled one whatever the hour: day.completed is told of a day the beat
    # planned, which it does from the organization's send time (the default is 09:00).
    org = make_org(pg_engine, "acme", now=utcnow(), send_window="00:00-00:00", send_time="00:00")
    seed_due(pg_engine, org, n, today=utcnow().date())
    env.update(
        REMINDER_TICK_SECONDS="1",
        EVENTS_ALLOW_PRIVATE="1",
        EVENTS_BACKOFF_SECONDS="1",
        EVENTS_BACKOFF_MAX_SECONDS="2",
        EVENTS_TIMEOUT_SECONDS="3",
    )
    with receiver() as hook:
        secret = _endpoint(pg_engine, hook.url)
        hook.fail_for(8)
        with worker(env, tmp_path), beat(env, tmp_path):
            enqueue_day(on_date=None, org_slugs=["acme"])
            wait_for(
                lambda: len(hook.events(secret)) >= n + 1,
                timeout=120,
                what=f"{n} message.sent and a day.completed",
            )
            time.sleep(3)  # anything more would come now
        told = hook.events(secret)
        failed_first = sum(1 for r in hook.requests if r.answered == 500)
    assert status_counts(pg_engine) == {"sent": n}
    kinds = Counter(e["type"] for e in told.values())
    assert kinds == {"message.sent": n, "day.completed": 1}
    # One event per text: ids distinct, and no text told twice under two ids.
    assert len({e["data"]["message_id"] for e in told.values() if e["type"] == "message.sent"}) == n
    assert failed_first > 0, "the endpoint never failed: the test proves nothing about retries"
    with pg_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Event)).scalar_one() == n + 1
        statuses = conn.execute(
            select(EventDelivery.status, func.count()).group_by(EventDelivery.status)
        ).all()
    assert dict(statuses) == {"delivered": n + 1}


@pytest.mark.timeout(240)
def test_a_worker_killed_mid_delivery_loses_no_event(
    pg_engine: Engine, celery_app: Celery, env: dict[str, str], tmp_path: Path
) -> None:
    n = 30
    org = make_org(pg_engine, "acme", now=utcnow(), send_window="00:00-00:00")
    env.update(
        REMINDER_TICK_SECONDS="1",
        EVENTS_ALLOW_PRIVATE="1",
        EVENTS_TIMEOUT_SECONDS="3",  # a claim's lease: 3 + 3 + 10 s
        EVENTS_CONCURRENCY="4",
    )
    with receiver() as hook:
        secret = _endpoint(pg_engine, hook.url, "optout.created")
        hook.delay = 1.0  # every answer takes a second: deliveries are in flight when killed
        with pg_engine.begin() as conn:
            for i in range(n):
                ledger.add_opt_out(
                    conn, org_id=org, phone_e164=f"+1415555{i:04d}", source="cli", now=utcnow()
                )
        with worker(env, tmp_path, name="doomed") as doomed, beat(env, tmp_path, name="beat1"):
            wait_for(lambda: len(hook.requests) >= 4, timeout=60, what="deliveries to start")
            doomed.kill()
        at_kill = len(hook.events(secret))
        assert at_kill < n, "everything went before the kill; make the delivery slower"
        hook.delay = 0.0
        with worker(env, tmp_path, name="heir"), beat(env, tmp_path, name="beat2"):
            wait_for(lambda: len(hook.events(secret)) >= n, timeout=120, what="every event")
        told = hook.events(secret)
    assert sorted(e["data"]["phone"] for e in told.values()) == [
        f"+1415555{i:04d}" for i in range(n)
    ]
    with pg_engine.connect() as conn:
        retried = conn.execute(select(func.count()).where(EventDelivery.attempts > 1)).scalar_one()
    assert retried > 0, "no delivery was in flight at the kill: the test proves nothing"


@pytest.mark.timeout(180)
def test_an_opt_out_through_the_api_reaches_the_host_within_seconds_without_waiting_for_beat(
    pg_engine: Engine, celery_app: Celery, env: dict[str, str], tmp_path: Path
) -> None:
    make_org(pg_engine, "acme", now=utcnow(), send_window="00:00-00:00")
    with pg_engine.begin() as conn:
        _, key = create_key(conn, slug="acme", name="host", admin=False, now=utcnow())
    env.update(EVENTS_ALLOW_PRIVATE="1")  # REMINDER_TICK_SECONDS stays 60: no beat runs anyway
    with receiver() as hook:
        secret = _endpoint(pg_engine, hook.url, "optout.created")
        with worker(env, tmp_path), serve(env, tmp_path) as api:
            answer = requests.post(
                f"{api.base}/v1/organizations/acme/opt-outs",
                json={"phone": "+14155550199"},
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
            )
            assert answer.status_code == 200, answer.text
            started = time.monotonic()
            wait_for(lambda: len(hook.events(secret)) == 1, timeout=30, what="optout.created")
            took = time.monotonic() - started
    (event,) = hook.events(secret).values()
    assert event["data"]["phone"] == "+14155550199"
    assert took < 10, f"{took:.1f} s: the API's commit did not wake the delivery"


@pytest.mark.timeout(180)
def test_an_endpoint_that_hangs_does_not_slow_the_day(
    pg_engine: Engine, celery_app: Celery, env: dict[str, str], tmp_path: Path
) -> None:
    """Every request to the host hangs 20 s while a day of 300 texts goes out at 50 a second
    on a worker of two processes: the day still takes about 6 s (delivery holds no pool
    process: send batches and beat's tasks find one)."""
    n = 300
    org = make_org(pg_engine, "acme", now=utcnow(), send_window="00:00-00:00")
    seed_due(pg_engine, org, n, today=utcnow().date())
    env.update(
        SMS_RATE_PER_SECOND="50",
        REMINDER_TICK_SECONDS="1",
        EVENTS_ALLOW_PRIVATE="1",
        EVENTS_TIMEOUT_SECONDS="25",
    )
    with receiver() as hook:
        _endpoint(pg_engine, hook.url, "message.sent")
        hook.delay = 20.0
        with worker(env, tmp_path, concurrency=2), beat(env, tmp_path):
            started = time.monotonic()
            enqueue_day(on_date=None, org_slugs=["acme"])
            wait_for(
                lambda: status_counts(pg_engine) == {"sent": n}, timeout=60, what="the day's texts"
            )
            took = time.monotonic() - started
            in_flight = hook.started
    assert in_flight > 0, "no event was in flight: the test proves nothing"
    assert took < 15, f"the day took {took:.1f} s behind a hanging endpoint"

"""Handing a day to the workers and waiting for it, for `reminders run --enqueue [--wait]`.

Waiting reads the ledger, not the broker: the day is done when none of its rows is ``sending``
or ``pending`` with its attempt due (rows held for the send window or waiting for a later retry
are left to the workers and reported as ``pending``).
"""

from __future__ import annotations

import time
from datetime import date
from typing import Any

import redis
from celery.result import AsyncResult
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url
from sqlalchemy import Engine

from app.domain.planning import utcnow
from app.errors import ReminderError
from app.services import dispatch
from app.tasks import runtime
from app.tasks.scheduler import app, send_payment_reminder_sms

_PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0.5, "interval_step": 1.0}
# A run's own count of these is the day's change; pending and sending are what still waits.
_SETTLED = ("sent", "failed", "skipped", "unknown")


#: A client that cannot reach the broker says so within a few seconds, not after Celery's
#: default retries (about 20 s and a page of traceback).
CONNECT_TIMEOUT_SECONDS = 2.0


def _unreachable(what: str, url: str, exc: BaseException) -> ReminderError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ReminderError(
        f"cannot reach the {what} at {maybe_sanitize_url(url)} ({reason}); is it running, and is "
        "CELERY_BROKER_URL (or REDIS_URL) right?"
    )


def check_broker() -> None:
    """Connect once to the broker and the result store, briefly, before anything is published."""
    broker = app.conf.broker_url
    try:
        with app.connection_for_write(connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
            conn.ensure_connection(
                max_retries=1, interval_start=0.2, timeout=CONNECT_TIMEOUT_SECONDS
            )
    except (OperationalError, OSError, redis.RedisError) as exc:
        raise _unreachable("broker", broker, exc) from None
    backend = str(app.conf.result_backend or "")
    if backend.startswith(("redis://", "rediss://")):
        client = redis.Redis.from_url(
            backend,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_timeout=CONNECT_TIMEOUT_SECONDS,
        )
        try:
            client.ping()
        except redis.RedisError as exc:
            raise _unreachable("result store (Redis)", backend, exc) from None
        finally:
            client.close()


def enqueue_day(*, on_date: date | None, org_slugs: list[str]) -> str:
    """Publish the daily run for these organizations (all when empty); return its task id."""
    check_broker()
    kwargs = {"date": on_date.isoformat() if on_date else None, "org": list(org_slugs) or None}
    try:
        result = send_payment_reminder_sms.apply_async(
            kwargs=kwargs, retry=True, retry_policy=_PUBLISH_RETRY
        )
    except OperationalError as exc:
        raise _unreachable("broker", app.conf.broker_url, exc) from None
    return str(result.id)


def wait_day(
    task_id: str | None,
    *,
    on_date: date | None,
    org_slugs: list[str],
    timeout: float,
    poll_seconds: float = 0.5,
    before: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Wait until the day's rows for these organizations are settled; return what this run did
    and, under ``day``, the day's totals.

    What this run did is the day's totals less ``before`` (the totals just before it was
    enqueued) for the settled statuses, and what still waits for ``pending``. With a
    ``task_id``, first waits for that daily run to plan (its result carries ``planned``).
    Raises ReminderError when the run failed or the time ran out.
    """
    deadline = time.monotonic() + timeout
    planned: int | None = None
    if task_id is not None:
        planned = _wait_planned(task_id, deadline, poll_seconds)
    engine = runtime.current().engine
    while True:
        busy, totals = day_counts(engine, on_date=on_date, org_slugs=org_slugs)
        summary: dict[str, Any] = {"planned": planned} if planned is not None else {}
        summary.update(
            {
                status: n - (before or {}).get(status, 0) if status in _SETTLED else n
                for status, n in totals.items()
            }
        )
        summary["day"] = totals
        if not busy:
            return summary
        if time.monotonic() >= deadline:
            shown = ", ".join(f"{k} {v}" for k, v in totals.items())
            raise ReminderError(
                f"timed out after {timeout:g} s with {busy} texts still due or sending (day's "
                f"totals: {shown}); are the workers running? `reminders status` shows progress"
            )
        time.sleep(poll_seconds)


def day_counts(
    engine: Engine, *, on_date: date | None, org_slugs: list[str]
) -> tuple[int, dict[str, int]]:
    """The day's rows of these organizations (all when empty): how many are still due or
    sending, and the day's totals per status."""
    now = utcnow()
    with engine.connect() as conn:
        days = dispatch.org_days(conn, org_slugs=org_slugs, on_date=on_date, now=now)
        busy = dispatch.day_busy(conn, org_days=days, now=now)
        totals = dispatch.day_totals(conn, org_days=days)
    return busy, totals


def _wait_planned(task_id: str, deadline: float, poll_seconds: float) -> int:
    result = AsyncResult(task_id, app=app)
    while not result.ready():
        if time.monotonic() >= deadline:
            raise ReminderError(
                f"the daily run {task_id} did not finish planning in time; is a worker running "
                "(`celery -A app.tasks.scheduler inspect active`)?"
            )
        time.sleep(poll_seconds)
    if not result.successful():
        raise ReminderError(
            f"the daily run {task_id} failed: {result.result!r}; see the worker log"
        )
    value = result.result
    return int(value.get("planned", 0)) if isinstance(value, dict) else 0

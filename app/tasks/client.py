"""Handing a day to the workers and waiting for it, for `reminders run --enqueue [--wait]`.

Waiting reads the ledger, not the broker: the day is done when none of its rows is ``sending``
or ``pending`` with its attempt due (rows held for the send window or waiting for a later retry
are left to the workers and reported as ``pending``).
"""

from __future__ import annotations

import time
from datetime import date
from typing import Any

from celery.result import AsyncResult
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url
from sqlalchemy import Engine

from app.db import ledger
from app.domain.planning import utcnow
from app.errors import ReminderError
from app.services import dispatch
from app.services.engine import load_orgs
from app.tasks import runtime
from app.tasks.scheduler import app, send_payment_reminder_sms

_PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0.5, "interval_step": 1.0}
_COUNTED = ("sent", "failed", "skipped", "pending", "sending", "unknown")


def enqueue_day(*, on_date: date | None, org_slugs: list[str]) -> str:
    """Publish the daily run for these organizations (all when empty); return its task id."""
    kwargs = {"date": on_date.isoformat() if on_date else None, "org": list(org_slugs) or None}
    try:
        result = send_payment_reminder_sms.apply_async(
            kwargs=kwargs, retry=True, retry_policy=_PUBLISH_RETRY
        )
    except OperationalError as exc:
        url = maybe_sanitize_url(app.conf.broker_url)
        raise ReminderError(
            f"cannot reach the broker at {url} ({exc}); is it running, and is "
            "CELERY_BROKER_URL (or REDIS_URL) right?"
        ) from None
    return str(result.id)


def wait_day(
    task_id: str | None,
    *,
    on_date: date | None,
    org_slugs: list[str],
    timeout: float,
    poll_seconds: float = 0.5,
) -> dict[str, Any]:
    """Wait until the day's rows for these organizations are settled; return the counts.

    With a ``task_id``, first waits for that daily run to plan (its result carries
    ``planned``). Raises ReminderError when the run failed or the time ran out.
    """
    deadline = time.monotonic() + timeout
    planned: int | None = None
    if task_id is not None:
        planned = _wait_planned(task_id, deadline, poll_seconds)
    engine = runtime.current().engine
    while True:
        busy, counts = day_counts(engine, on_date=on_date, org_slugs=org_slugs)
        summary: dict[str, Any] = {"planned": planned} if planned is not None else {}
        summary.update(counts)
        if not busy:
            return summary
        if time.monotonic() >= deadline:
            shown = ", ".join(f"{k} {v}" for k, v in summary.items())
            raise ReminderError(
                f"timed out after {timeout:g} s with {busy} texts still due or sending ({shown}); "
                "are the workers running? `reminders status` shows progress"
            )
        time.sleep(poll_seconds)


def day_counts(
    engine: Engine, *, on_date: date | None, org_slugs: list[str]
) -> tuple[int, dict[str, int]]:
    """The day's rows of these organizations (all when empty): how many are still due or
    sending, and the count per status."""
    now = utcnow()
    with engine.connect() as conn:
        orgs = load_orgs(conn, ledger.active_org_ids(conn, org_slugs or None))
        days = {o.id: o.today(now, on_date) for o in orgs.values()}
        busy = dispatch.day_busy(conn, org_days=days, now=now)
        counts = dispatch.day_status_counts(conn, org_days=days)
    return busy, {status: counts.get(status, 0) for status in _COUNTED}


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

"""The daily task's ``date`` argument (R3): only an organization's own today is sent for."""

from __future__ import annotations

from datetime import date, timedelta

import redis
from celery import Celery
from freezegun import freeze_time
from sqlalchemy import Engine, insert, select

from app.db.models import DailyRun, Reminder
from app.domain.planning import utcnow
from tests.factories import add_subscription, make_org


def test_a_day_run_after_its_local_midnight_previews_and_sends_nothing(
    celery_app: Celery, broker: str, pg_engine: Engine
) -> None:
    from app.tasks.scheduler import send_payment_reminder_sms

    with freeze_time("2030-06-11 01:00:00"):  # 02:00 on the 11th in Paris
        org = make_org(
            pg_engine, "paris", tz="Europe/Paris", now=utcnow(), send_window="00:00-00:00"
        )
        add_subscription(pg_engine, org, expires_on=date(2030, 6, 13))
        with pg_engine.begin() as conn:  # the 10th's run, started before midnight
            conn.execute(
                insert(DailyRun).values(
                    org_id=org,
                    local_date=date(2030, 6, 10),
                    status="started",
                    task_id="t-10",
                    planned=0,
                    started_at=utcnow() - timedelta(hours=2),
                )
            )
        result = send_payment_reminder_sms(date="2030-06-10", org="paris")

    assert result["previewed"] == {"paris": 1} and result["planned"] == 0
    assert result["enqueued"] == 0
    with pg_engine.connect() as conn:
        assert conn.execute(select(Reminder.id)).all() == []
        assert conn.execute(select(DailyRun.status)).scalars().all() == ["planned"]
    assert redis.Redis.from_url(broker).llen("reminders") == 0

    with freeze_time("2030-06-11 07:00:00"):  # the 11th's own run plans and hands it over
        today = send_payment_reminder_sms(date="2030-06-11", org="paris")
    assert (today["planned"], today["enqueued"], today["previewed"]) == (1, 1, {})
    with pg_engine.connect() as conn:
        row = conn.execute(select(Reminder.lead_days, Reminder.days_left)).one()
    assert tuple(row) == (3, 2)

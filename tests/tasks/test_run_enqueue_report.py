"""``reminders run --enqueue --wait`` reports what that run did, like a plain ``run``; the day's
totals come on their own line, labelled."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import Engine

from app.domain.planning import utcnow
from tests.factories import make_org
from tests.tasks.support import seed_due, worker

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REMINDERS = str(Path(sys.executable).with_name("reminders"))


def _reminders(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [REMINDERS, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.timeout(180)
def test_plain_run_and_enqueued_run_each_report_their_own_texts(
    pg_engine: Engine, celery_app: Celery, env: dict[str, str], tmp_path: Path
) -> None:
    org = make_org(pg_engine, "acme", now=utcnow(), send_window="00:00-00:00")
    today = utcnow().date()
    seed_due(pg_engine, org, 3, today=today)

    plain = _reminders("run", "--org", "acme", env=env, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.splitlines() == [
        "planned 3, sent 3, failed 0, skipped 0, held 0, retrying 0, unknown 0",
        "day's totals so far (each organization's today): sent 3, failed 0, skipped 0, "
        "pending 0, sending 0, unknown 0",
    ]

    seed_due(pg_engine, org, 2, today=today, start=100)
    with worker(env, tmp_path):
        queued = _reminders("run", "--org", "acme", "--enqueue", "--wait", env=env, cwd=tmp_path)

    assert queued.returncode == 0, queued.stderr
    this_run, day = queued.stdout.splitlines()
    assert this_run.split(": ", 1)[1] == (
        "planned 2, sent 2, failed 0, skipped 0, unknown 0, still pending 0"
    )
    assert day == (
        "day's totals so far (each organization's today): sent 5, failed 0, skipped 0, "
        "pending 0, sending 0, unknown 0"
    )

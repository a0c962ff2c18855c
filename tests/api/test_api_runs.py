"""Runs, tasks and workers over HTTP, with a real Celery worker on this run's broker."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, text

from tests.api.conftest import key_for
from tests.api.support import Api, problem
from tests.tasks.support import seed_due, worker, worker_env

pytestmark = pytest.mark.slow


def _org_id(db: Engine) -> int:
    with db.connect() as conn:
        return int(
            conn.execute(text("SELECT id FROM organizations WHERE slug='acme'")).scalar_one()
        )


def _until(api: Api, task_id: str, check: Any, *, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task = api.ok("GET", f"/v1/tasks/{task_id}")
        if check(task):
            return task  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"task never got there: {task}"
        time.sleep(0.3)


@pytest.fixture
def broker(redis_url: str) -> str:
    redis.Redis.from_url(redis_url).flushdb()
    return redis_url


def test_a_run_goes_to_the_workers_and_is_followed_to_the_end(
    api: Api, admin: Api, db: Engine, pg_url: str, broker: str, tmp_path: Path
) -> None:
    today = datetime.now(UTC).date()
    seed_due(db, _org_id(db), 2, today=today)
    env = worker_env(pg_url=pg_url, broker=broker, redis_url=broker, tmp=tmp_path)
    with worker(env, tmp_path):
        started = api.post("/v1/runs", json={})
        assert started.status_code == 202, started.text
        task_id = started.json()["task_id"]
        done = _until(api, task_id, lambda t: t["state"] == "SUCCESS" and t["counts"]["sent"] == 2)
        assert done["organization"] == "acme" and done["result"]["planned"] == 2

        workers = admin.ok("GET", "/v1/workers")
        assert [w["name"].split("@")[0] for w in workers] == ["w1"]
        assert workers[0]["answered"] and workers[0]["queues"]
        assert "admin key" in problem(api.get("/v1/workers"), 403)

        assert "cannot be revoked" in problem(api.delete(f"/v1/tasks/{task_id}"), 409)
        assert api.ok("GET", "/v1/tasks")["items"] == []  # finished: not active
    assert (tmp_path / "sms.txt").read_text().count("\n") == 2

    admin.ok(
        "POST",
        "/v1/organizations",
        json={"slug": "other", "name": "O", "timezone": "UTC", "country": "US"},
    )
    other = Api(api.base, key_for(db, "other"))
    assert problem(other.get(f"/v1/tasks/{task_id}"), 404)
    assert problem(other.post("/v1/runs", json={"organization": "acme"}), 404)


def test_a_queued_run_is_listed_and_can_be_revoked(api: Api, broker: str) -> None:
    """No worker is running: the run waits in the queue."""
    task_id = api.ok("POST", "/v1/runs", json={})["task_id"]
    listed = api.ok("GET", "/v1/tasks")["items"]
    assert [(t["task_id"], t["state"]) for t in listed] == [(task_id, "PENDING")]
    assert api.ok("DELETE", f"/v1/tasks/{task_id}") == {"task_id": task_id, "revoked": True}


def test_a_dry_run_previews_and_writes_nothing(api: Api, db: Engine, broker: str) -> None:
    seed_due(db, _org_id(db), 3, today=datetime.now(UTC).date())
    response = api.post("/v1/runs", json={"dry_run": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task_id"] is None and body["planned"] == 3 and len(body["would_send"]) == 3
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM reminders")).scalar_one() == 0

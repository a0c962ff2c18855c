"""Celery's own ``-l/--loglevel`` sets the worker's and beat's level; without it, LOG_LEVEL does."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

CELERY = str(Path(sys.executable).with_name("celery"))
ROOT = Path(__file__).resolve().parents[2]


def _run_until(role: str, args: list[str], tmp_path: Path, done: str, seconds: float) -> str:
    """Start ``celery <role>``, stop it once ``done`` is in its output (or the time is up)."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SMS_", "TWILIO_", "REMINDER_", "LOG_", "CELERY_", "REDIS_"))
    }
    env = {
        **clean,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}",
        "CELERY_BROKER_URL": "memory://",
        "LOG_LEVEL": "ERROR",
        "WORKER_HEARTBEAT_FILE": str(tmp_path / "worker.beat"),
        "BEAT_HEARTBEAT_FILE": str(tmp_path / "beat.beat"),
    }
    log = tmp_path / f"{role}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [CELERY, "-A", "app.tasks.scheduler", role, *args],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and proc.poll() is None:
                if done in log.read_text() or (tmp_path / f"{role}.beat").exists():
                    break
                time.sleep(0.1)
            time.sleep(0.5)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return log.read_text()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("flag", ["-l", "--loglevel"])
def test_worker_loglevel_option_wins_over_log_level(tmp_path: Path, flag: str) -> None:
    out = _run_until("worker", ["--pool", "solo", flag, "info"], tmp_path, "worker ready", 45)

    assert "INFO app.worker: worker ready" in out


@pytest.mark.timeout(90)
def test_without_the_option_log_level_applies_to_the_worker(tmp_path: Path) -> None:
    out = _run_until("worker", ["--pool", "solo"], tmp_path, "worker ready", 45)

    assert (tmp_path / "worker.beat").exists(), out  # it did get ready
    assert "worker ready" not in out


@pytest.mark.timeout(90)
def test_beat_loglevel_option_wins_over_log_level(tmp_path: Path) -> None:
    out = _run_until(
        "beat", ["-l", "INFO", "-s", str(tmp_path / "schedule")], tmp_path, "Scheduler: Sending", 45
    )

    assert "beat: Starting" in out or "Scheduler: Sending" in out, out

"""A misconfigured service refuses to start, worker and beat alike, with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CELERY = str(Path(sys.executable).with_name("celery"))


def _start(role: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("SMS_", "TWILIO_", "REMINDER_"))
    }
    return subprocess.run(
        [CELERY, "-A", "app.tasks.scheduler", role, "-l", "INFO"],
        env={**clean, "DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}", **env},
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("role", ["worker", "beat"])
def test_twilio_without_credentials_refuses_to_start(role: str, tmp_path: Path) -> None:
    done = _start(role, {"SMS_PROVIDER": "twilio", "CELERY_BROKER_URL": "memory://"}, tmp_path)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "TWILIO_ACCOUNT_SID" in errors[0]


def test_a_bad_setting_is_named_in_one_line(tmp_path: Path) -> None:
    done = _start(
        "worker", {"SMS_MAX_ATTEMPTS": "many", "CELERY_BROKER_URL": "memory://"}, tmp_path
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: SMS_MAX_ATTEMPTS='many': expected a whole number, got 'many'"
    )
    assert "Traceback" not in done.stderr

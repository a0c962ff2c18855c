"""``reminders reconcile`` and ``reminders webhook`` as a user runs them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_support import Cli, write_csv
from sqlalchemy import Engine

from tests.ledger_rows import get_row, make_org, make_row
from tests.twilio_fake import DEFAULT_FROM, FakeTwilio


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


def twilio_env(fake: FakeTwilio) -> dict[str, str]:
    return {
        "SMS_PROVIDER": "twilio",
        "TWILIO_ACCOUNT_SID": fake.account_sid,
        "TWILIO_AUTH_TOKEN": fake.auth_token,
        "TWILIO_FROM_NUMBER": DEFAULT_FROM,
        "TWILIO_API_BASE_URL": fake.base_url,
    }


def test_reconcile_settles_rows_through_the_fake(cli: Cli, db: Engine, fake: FakeTwilio) -> None:
    now = datetime.now(UTC)
    org = make_org(db)
    found = make_row(db, org, status="unknown", claimed_at=now - timedelta(minutes=10))
    missing = make_row(
        db, org, phone="+14155550109", status="unknown", claimed_at=now - timedelta(minutes=10)
    )
    message = fake.add_message("+14155552671", "Your plan ends in 3 days", from_=DEFAULT_FROM)

    report = cli.json("reconcile", env=twilio_env(fake))

    assert (report["checked"], report["sent"], report["retried"]) == (2, 1, 1)
    assert get_row(db, found).provider_message_id == message.sid
    assert get_row(db, missing).status == "pending"
    text = cli.ok("reconcile", env=twilio_env(fake)).out
    assert text.startswith("checked 0:")


def test_reconcile_with_the_console_provider(cli: Cli, db: Engine) -> None:
    org = make_org(db)
    rid = make_row(db, org, status="unknown", claimed_at=datetime.now(UTC))
    assert cli.json("reconcile", "--since", "2000-01-01")["retried"] == 1
    assert get_row(db, rid).status == "pending"


def test_reconcile_refuses_without_credentials(cli: Cli, sqlite_db: Engine) -> None:
    error = cli("reconcile", env={"SMS_PROVIDER": "twilio"}).error
    assert "TWILIO_ACCOUNT_SID" in error and "TWILIO_AUTH_TOKEN" in error


def test_reconcile_rejects_a_bad_date(cli: Cli, sqlite_db: Engine) -> None:
    assert "--since" in cli("reconcile", "--since", "yesterday").error


def test_webhook_refuses_without_a_public_url(cli: Cli, sqlite_db: Engine) -> None:
    twilio = {
        "SMS_PROVIDER": "twilio",
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "TWILIO_AUTH_TOKEN": "t",
        "TWILIO_FROM_NUMBER": "+15005550006",
    }
    error = cli("webhook", "--port", "0", env=twilio).error
    assert "WEBHOOK_BASE_URL" in error


def test_a_run_with_failed_texts_finishes_and_exits_3(
    cli: Cli, db: Engine, fake: FakeTwilio, tmp_path: Path
) -> None:
    """R6: the run is over and says what failed, with a status a script can test."""
    cli.ok(
        "org",
        "add",
        "acme",
        "--name",
        "Acme",
        "--timezone",
        "UTC",
        "--country",
        "US",
        "--send-window",
        "00:00-00:00",
    )
    today = datetime.now(UTC).date()
    rows = [
        ("c1", "Ada", "+1 415 555 2671", "s1", "Fiber", str(today + timedelta(days=3))),
        ("c2", "Bob", "+1 415 555 2672", "s2", "Fiber", str(today + timedelta(days=3))),
    ]
    cli.ok("import", "acme", write_csv(tmp_path / "a.csv", rows))
    fake.fail("+14155552672", 21211, message="Invalid 'To' Phone Number")

    result = cli("run", "--json", env=twilio_env(fake))

    assert result.code == 3, result.err
    summary = json.loads(result.out)
    assert (summary["sent"], summary["failed"]) == (1, 1)


def test_reconcile_delay_comes_from_its_setting(cli: Cli, db: Engine, fake: FakeTwilio) -> None:
    org = make_org(db)
    rid = make_row(db, org, status="unknown", claimed_at=datetime.now(UTC) - timedelta(seconds=10))

    assert cli.json("reconcile", env=twilio_env(fake))["waiting"] == 1  # 300 s by default
    assert get_row(db, rid).status == "unknown"
    env = {**twilio_env(fake), "REMINDER_RECONCILE_DELAY_SECONDS": "5"}
    assert cli.json("reconcile", env=env)["retried"] == 1
    assert get_row(db, rid).status == "pending"
    bad = cli("reconcile", env={**env, "REMINDER_RECONCILE_DELAY_SECONDS": "soon"}).error
    assert bad.startswith("error: REMINDER_RECONCILE_DELAY_SECONDS='soon'")

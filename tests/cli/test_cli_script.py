"""The installed ``reminders`` script and ``python -m app``, run as a user would, plus settings."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from cli_support import Cli, run_script, url_of, write_csv
from sqlalchemy import Engine, text


def test_demo_on_an_empty_directory_sends_texts_to_the_console(tmp_path: Path, cli: Cli) -> None:
    result = run_script("demo", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "reminders.db").exists()
    out = result.stdout.splitlines()
    assert out[0] == "created demo organization 'demo' with 12 subscriptions"
    # Due today: 5, 3, 1 days (their own lead), 4 and 2 days (the next lead up), a second 3-day.
    # Skipped: an invalid number and an opted-out one. Cancelled, expired and far-off: nothing.
    assert out[1] == "planned 8, sent 6, failed 0, skipped 2, held 0, retrying 0, unknown 0"
    sms_lines = [line for line in result.stderr.splitlines() if "SMS to " in line]
    assert len(sms_lines) == 6
    assert any(
        "Hi Ada Lovelace, your Demo Telecom Fiber 500 plan expires in 5 days" in line
        for line in sms_lines
    )

    again = run_script("demo", cwd=tmp_path)  # safe to run again: refreshes, sends nothing twice

    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        "refreshed demo organization 'demo' with 12 subscriptions",
        "planned 0, sent 0, failed 0, skipped 0, held 0, retrying 0, unknown 0",  # this run
        "day's totals so far (each organization's today): sent 6, failed 0, skipped 2, "
        "pending 0, sending 0, unknown 0",
    ]
    # The demo's own reminders.db, named absolutely: an engine an earlier test made in this
    # process for the relative default URL would read another directory's file.
    url = f"sqlite:///{tmp_path / 'reminders.db'}"
    assert cli.json("status", env={"DATABASE_URL": url}) == {"demo": {"sent": 6, "skipped": 2}}


def test_python_dash_m_app_is_the_same_command(tmp_path: Path, pg_engine: Engine) -> None:
    plain_url = url_of(pg_engine).replace("postgresql+psycopg://", "postgresql://", 1)
    env = {"DATABASE_URL": plain_url}  # the usual form of a PostgreSQL URL
    slug = "modtest"

    added = run_script(
        "org",
        "add",
        slug,
        "--name",
        "Mod",
        "--timezone",
        "UTC",
        "--country",
        "US",
        cwd=tmp_path,
        env=env,
        module=True,
    )

    assert added.returncode == 0, added.stderr
    with pg_engine.connect() as conn:
        assert conn.execute(text("SELECT slug FROM organizations")).scalars().all() == [slug]
    helped = run_script("--help", cwd=tmp_path, module=True)
    assert helped.returncode == 0
    for command in (
        "run",
        "import",
        "template",
        "preview",
        "opt-out",
        "opt-in",
        "demo",
        "messages",
    ):
        assert command in helped.stdout


def test_script_run_against_sqlite(sqlite_db: Engine, cli: Cli, tmp_path: Path) -> None:
    cli.ok("org", "add", "acme", "--name", "Acme", "--timezone", "Asia/Tokyo")
    tokyo = datetime.now(ZoneInfo("Asia/Tokyo")).date()
    rows = [("c1", "Ada", "+1 202 555 0101", "s1", "Fiber", str(tokyo + timedelta(days=3)))]
    cli.ok("import", "acme", write_csv(tmp_path / "a.csv", rows))
    env = {"DATABASE_URL": url_of(sqlite_db)}

    result = run_script("run", "--ignore-window", "--json", cwd=tmp_path, env=env)

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # logs went to stderr, so stdout is pure JSON
    assert (summary["planned"], summary["sent"]) == (1, 1)
    assert "SMS to +12*******01" in result.stderr
    [message] = cli.json("messages")
    assert (message["lead_days"], message["days_left"], message["status"]) == (3, 3, "sent")

    # Another day than today is a preview: one line on stderr, nothing written or sent.
    later = str(tokyo + timedelta(days=1))
    preview = run_script("run", "--date", later, "--json", cwd=tmp_path, env=env)
    assert preview.returncode == 0, preview.stderr
    assert json.loads(preview.stdout)["dry_run"] is True
    assert f"note: {later} is not today in acme" in preview.stderr
    assert "SMS to" not in preview.stderr
    assert cli.json("messages") == [message]


def test_unmigrated_database_is_a_one_line_error(cli: Cli, tmp_path: Path) -> None:
    result = cli("org", "list", env={"DATABASE_URL": f"sqlite:///{tmp_path}/empty.db"})

    assert result.error.startswith("error: database:")
    assert "reminders db upgrade" in result.error


def test_db_upgrade_creates_the_schema_and_is_safe_to_repeat(cli: Cli, tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/new.db"}
    for _ in range(2):
        assert cli.ok("db", "upgrade", env=env).out == "database is up to date\n"
    assert cli.json("org", "list", env=env) == []


def test_bad_setting_in_a_real_process_names_the_variable(tmp_path: Path) -> None:
    result = run_script("org", "list", cwd=tmp_path, env={"SMS_MAX_ATTEMPTS": "abc"})

    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: SMS_MAX_ATTEMPTS=")
    assert not (tmp_path / "reminders.db").exists()


@pytest.mark.parametrize(
    ("name", "value", "hint"),
    [
        ("SMS_MAX_ATTEMPTS", "abc", "abc"),
        ("SMS_MAX_ATTEMPTS", "0", "at least 1"),
        ("REMINDER_LEAD_DAYS", "x", "comma-separated"),
        ("REMINDER_LEAD_DAYS", "5,-3", "between 0 and 365"),
        ("REMINDER_SEND_TIME", "9 o'clock", "HH:MM"),
        ("REMINDER_SEND_WINDOW", "08:00", "HH:MM-HH:MM"),
        ("SMS_PROVIDER", "carrier-pigeon", "console, twilio"),
        ("SMS_RETRY_BACKOFF_SECONDS", "-1", "at least 0"),
        ("SMS_MAX_SEGMENTS", "many", "many"),
        ("REMINDER_DEFAULT_COUNTRY", "USA", "two-letter"),
    ],
)
def test_bad_setting_stops_every_command_with_one_line(
    sqlite_db: Engine, cli: Cli, name: str, value: str, hint: str
) -> None:
    result = cli("org", "list", env={name: value})

    assert result.error.startswith(f"error: {name}=")
    assert hint in result.error
    assert result.out == ""


def test_twilio_provider_without_credentials_refuses_to_run(sqlite_db: Engine, cli: Cli) -> None:
    cli.ok("org", "add", "acme", "--name", "Acme", "--timezone", "UTC", "--country", "US")

    result = cli("run", env={"SMS_PROVIDER": "twilio"})

    assert "TWILIO" in result.error

"""``reminders org add`` / ``org list``: bad input is refused with one line and stores nothing."""

from __future__ import annotations

import pytest
from cli_support import Cli, count
from sqlalchemy import Engine

ACME = ("org", "add", "acme", "--name", "Acme Fiber", "--timezone", "America/New_York")


def test_org_add_then_list_json_shows_every_field(db: Engine, cli: Cli) -> None:
    added = cli.ok(
        *ACME,
        "--send-time",
        "10:30",
        "--send-window",
        "09:00-20:00",
        "--lead-days",
        "1,7,3",
        "--country",
        "fr",
        "--sender",
        "+15005550006",
    )
    assert "acme" in added.out

    [org] = cli.json("org", "list")

    assert org == {
        "slug": "acme",
        "name": "Acme Fiber",
        "timezone": "America/New_York",
        "send_time": "10:30",
        "send_window": "09:00-20:00",
        "lead_days": [7, 3, 1],
        "country": "FR",
        "sender": "+15005550006",
        "rate": None,
        "active": True,
    }


def test_org_defaults_come_from_settings(db: Engine, cli: Cli) -> None:
    env = {"REMINDER_LEAD_DAYS": "7,2", "REMINDER_SEND_TIME": "11:15"}
    cli.ok(*ACME, env=env)

    [org] = cli.json("org", "list")

    assert org["lead_days"] == [7, 2]
    assert org["send_time"] == "11:15"
    assert org["send_window"] == "08:00-21:00"
    assert org["country"] == "US"


def test_org_list_is_empty_json_list_on_a_fresh_database(db: Engine, cli: Cli) -> None:
    assert cli.json("org", "list") == []


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (("--timezone", "Mars/Olympus_Mons"), "Mars/Olympus_Mons"),
        (("--timezone", "../../etc/passwd"), "time zone"),
        (("--send-time", "25:00"), "--send-time"),
        (("--send-time", "9am"), "--send-time"),
        (("--send-window", "08:00"), "--send-window"),
        (("--send-window", "08:00-24:30"), "--send-window"),
        (("--lead-days", "5,x,1"), "--lead-days"),
        (("--lead-days", "-1"), "--lead-days"),
        (("--lead-days", "400"), "--lead-days"),
        (("--lead-days", ","), "--lead-days"),
        (("--country", "USA"), "--country"),
        (("--rate", "0"), "--rate"),
        (("--name", "  "), "--name"),
    ],
)
def test_org_add_refuses_bad_option_with_one_line(
    sqlite_db: Engine, cli: Cli, extra: tuple[str, str], named: str
) -> None:
    base = {"--name": "Acme", "--timezone": "Europe/Paris"}
    base[extra[0]] = extra[1]
    args = [part for pair in base.items() for part in pair]

    result = cli("org", "add", "acme", *args)

    assert named in result.error
    assert result.out == ""
    assert count(sqlite_db, "organizations") == 0


@pytest.mark.parametrize(
    ("send_time", "window"),
    [("22:00", "08:00-21:00"), ("07:59", "08:00-21:00"), ("12:00", "22:00-06:00")],
)
def test_org_add_refuses_a_send_time_outside_the_window(
    sqlite_db: Engine, cli: Cli, send_time: str, window: str
) -> None:
    """R4, issue 13 case 4: every day's texts would wait for the next morning, where the last
    reminder would come too late."""
    result = cli(
        "org",
        "add",
        "dubai",
        "--name",
        "Dubai",
        "--timezone",
        "Asia/Dubai",
        "--send-time",
        send_time,
        "--send-window",
        window,
    )

    assert result.code != 0
    assert result.error.startswith(
        f"error: --send-time {send_time} is outside --send-window {window}"
    )
    assert len(result.error.strip().splitlines()) == 1
    assert count(sqlite_db, "organizations") == 0


def test_a_default_send_time_outside_the_default_window_is_refused(
    sqlite_db: Engine, cli: Cli
) -> None:
    env = {"REMINDER_SEND_TIME": "22:00", "REMINDER_SEND_WINDOW": "08:00-21:00"}
    result = cli("org", "list", env=env)
    assert "REMINDER_SEND_TIME=22:00 is outside REMINDER_SEND_WINDOW=08:00-21:00" in result.error


def test_a_stale_sending_limit_shorter_than_a_send_is_refused(sqlite_db: Engine, cli: Cli) -> None:
    """The sweeper would take texts still in flight for dead, and send them again."""
    env = {
        "SMS_PROVIDER": "twilio",
        "TWILIO_TIMEOUT_SECONDS": "10",
        "REMINDER_STALE_SENDING_SECONDS": "15",
    }
    result = cli("status", env=env)
    assert result.code != 0
    assert result.error.startswith("error: REMINDER_STALE_SENDING_SECONDS=15 is not longer than")
    assert "TWILIO_TIMEOUT_SECONDS=10" in result.error and "set it above 19" in result.error
    assert len(result.error.strip().splitlines()) == 1
    assert cli("status", env={**env, "REMINDER_STALE_SENDING_SECONDS": "30"}).code == 0


@pytest.mark.parametrize("slug", ["Acme Corp", "acme/1", "", "x" * 65])
def test_org_add_refuses_bad_slug(sqlite_db: Engine, cli: Cli, slug: str) -> None:
    result = cli("org", "add", slug, "--name", "Acme", "--timezone", "UTC")

    assert "slug" in result.error
    assert count(sqlite_db, "organizations") == 0


def test_org_add_refuses_duplicate_slug_and_keeps_the_first(db: Engine, cli: Cli) -> None:
    cli.ok(*ACME)

    result = cli("org", "add", "ACME", "--name", "Impostor", "--timezone", "Europe/Paris")

    assert "'acme' already exists" in result.error
    [org] = cli.json("org", "list")
    assert (org["name"], org["timezone"]) == ("Acme Fiber", "America/New_York")


def test_org_add_missing_required_option_is_a_usage_error(sqlite_db: Engine, cli: Cli) -> None:
    result = cli("org", "add", "acme", "--name", "Acme")

    assert result.code == 2
    assert "--timezone" in result.error
    assert count(sqlite_db, "organizations") == 0


def test_org_list_plain_text_has_one_line_per_org(db: Engine, cli: Cli) -> None:
    cli.ok(*ACME)
    cli.ok("org", "add", "beta", "--name", "Beta", "--timezone", "Pacific/Auckland")

    lines = cli.ok("org", "list").out.splitlines()

    assert [line.split()[0] for line in lines] == ["acme", "beta"]
    assert "Pacific/Auckland" in lines[1]


def test_org_update_is_checked_as_org_add_and_a_refusal_changes_nothing(
    cli: Cli, db: Engine
) -> None:
    cli.ok(*ACME)
    assert "send_time" in cli.ok("org", "update", "acme", "--send-time", "10:15").out
    error = cli("org", "update", "acme", "--send-time", "23:30").error
    assert "--send-time 23:30 is outside --send-window" in error
    assert "--lead-days" in cli("org", "update", "acme", "--lead-days", "x").error
    assert "nothing to change" in cli("org", "update", "acme").error
    assert "no organization" in cli("org", "update", "nope", "--name", "X").error
    (org,) = cli.json("org", "list")
    assert org["send_time"] == "10:15"

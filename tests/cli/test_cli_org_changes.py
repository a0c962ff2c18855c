"""``org add`` refusals the issue found, the country from the zone, ``org set``, ``org disable``
and ``org enable``: a refused value changes nothing; a disabled organization plans and sends
nothing and keeps its data."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cli_support import Cli, count, write_csv
from freezegun import freeze_time
from sqlalchemy import Engine

from app.db import ledger
from tests.factories import RecordingProvider, make_sender
from tests.ledger_rows import make_org as make_row_org
from tests.ledger_rows import make_row

PARIS = ("org", "add", "paris", "--name", "Paris Fibre", "--timezone", "Europe/Paris")
ACME = ("org", "add", "acme", "--name", "Acme", "--timezone", "America/New_York")


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (("--rate", "nan"), "--rate nan: must be a number above 0"),
        (("--rate", "inf"), "--rate inf: must be a number above 0"),
        (("--rate", "-2"), "--rate -2.0: must be a number above 0"),
        (("--lead-days", ""), "--lead-days: expected at least one lead day"),
        (("--send-time", ""), "--send-time: expected a time as HH:MM"),
        (("--country", "ZZ"), "--country: ZZ is not a country with phone numbers"),
        (("--country", "XX"), "--country: XX is not a country with phone numbers"),
    ],
)
def test_org_add_refuses_what_would_be_stored_wrong(
    sqlite_db: Engine, cli: Cli, extra: tuple[str, str], reason: str
) -> None:
    error = cli(*ACME, *extra).error

    assert error.startswith(f"error: {reason}"), error
    assert count(sqlite_db, "organizations") == 0


def test_the_country_comes_from_a_zone_that_names_one(db: Engine, cli: Cli, tmp_path: Path) -> None:
    added = cli.ok(*PARIS)
    rows = [("c1", "Amélie", "06 12 34 56 78", "s1", "Fibre", "2030-06-15")]
    imported = cli.ok("import", "paris", write_csv(tmp_path / "fr.csv", rows))

    assert "country FR" in added.out
    assert cli.json("org", "list")[0]["country"] == "FR"
    assert "0 invalid phone numbers" in imported.out


def test_a_zone_naming_no_country_needs_country_or_the_setting(sqlite_db: Engine, cli: Cli) -> None:
    error = cli("org", "add", "utc", "--name", "U", "--timezone", "UTC").error
    assert "--country" in error and "REMINDER_DEFAULT_COUNTRY" in error
    assert count(sqlite_db, "organizations") == 0

    cli.ok(
        "org",
        "add",
        "utc",
        "--name",
        "U",
        "--timezone",
        "UTC",
        env={"REMINDER_DEFAULT_COUNTRY": "de"},
    )
    cli.ok("org", "add", "etc", "--name", "E", "--timezone", "Etc/GMT+5", "--country", "BR")

    countries = {o["slug"]: o["country"] for o in cli.json("org", "list")}
    assert countries == {"utc": "DE", "etc": "BR"}


def test_org_set_changes_only_what_is_given(sqlite_db: Engine, cli: Cli) -> None:
    cli.ok(*ACME, "--sender", "+15005550006")

    out = cli.ok("org", "set", "acme", "--lead-days", "7,2,0", "--rate", "2.5").out

    assert out.strip() == "changed organization acme: lead_days 7,2,0, rate 2.5"
    [org] = cli.json("org", "list")
    assert (org["lead_days"], org["rate"], org["sender"]) == ([7, 2, 0], 2.5, "+15005550006")
    assert (org["name"], org["timezone"], org["country"]) == ("Acme", "America/New_York", "US")


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (("--rate", "nan"), "--rate"),
        (("--lead-days", ""), "--lead-days"),
        (("--country", "ZZ"), "--country"),
        (("--timezone", "Mars/Base"), "Mars/Base"),
        (("--send-time", "22:30"), "outside --send-window"),
        (("--name", " "), "--name"),
    ],
)
def test_org_set_refuses_like_org_add_and_changes_nothing(
    sqlite_db: Engine, cli: Cli, extra: tuple[str, str], named: str
) -> None:
    cli.ok(*ACME)
    before = cli.json("org", "list")

    error = cli("org", "set", "acme", "--lead-days", "9", *extra).error

    assert named in error
    assert cli.json("org", "list") == before


def test_org_set_needs_an_option_and_a_known_organization(sqlite_db: Engine, cli: Cli) -> None:
    cli.ok(*ACME)

    assert "nothing to change" in cli("org", "set", "acme").error
    assert "no organization 'ghost'" in cli("org", "set", "ghost", "--rate", "1").error


@freeze_time("2030-06-10 14:00:00")  # 10:00 in New York
def test_a_disabled_org_plans_and_sends_nothing_and_keeps_its_data(
    db: Engine, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sms_log = tmp_path / "sms.log"
    monkeypatch.setenv("SMS_CONSOLE_OUTPUT", str(sms_log))
    cli.ok(*ACME)
    cli.ok("org", "add", "beta", "--name", "Beta", "--timezone", "America/New_York")
    rows = [("c1", "Ada", "+1 202 555 0101", "s1", "Fiber", "2030-06-15")]
    cli.ok("import", "acme", write_csv(tmp_path / "a.csv", rows))
    cli.ok("import", "beta", write_csv(tmp_path / "b.csv", rows))

    out = cli.ok("org", "disable", "acme").out
    assert out.startswith("disabled organization acme: it plans and sends nothing")
    assert "(it was already disabled)" in cli.ok("org", "disable", "acme").out

    summary = cli.json("run")
    assert (summary["planned"], summary["sent"]) == (1, 1)  # beta's only
    assert [m["org"] for m in cli.json("messages")] == ["beta"]
    assert "acme is disabled" in cli("run", "--org", "acme").error
    [acme] = [o for o in cli.json("org", "list") if o["slug"] == "acme"]
    assert acme["active"] is False and acme["disabled_at"].startswith("2030-06-10T14:00")
    assert count(db, "customers") == 2

    cli.ok("org", "enable", "acme")
    summary = cli.json("run")
    assert (summary["planned"], summary["sent"]) == (1, 1)
    assert sorted(m["org"] for m in cli.json("messages")) == ["acme", "beta"]
    assert len(sms_log.read_text(encoding="utf-8").splitlines()) == 2


def test_texts_already_planned_wait_while_their_org_is_disabled(
    engine: Engine, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The send path (a worker's batch names row ids) leaves a disabled organization's rows
    pending; enabled again, they go."""
    from tests.cli.cli_support import url_of

    monkeypatch.setenv("DATABASE_URL", url_of(engine))
    org = make_row_org(engine)
    [slug] = [o["slug"] for o in cli.json("org", "list")]
    rid = make_row(engine, org)
    provider = RecordingProvider()
    sender = make_sender(engine, provider)
    try:
        cli.ok("org", "disable", slug)
        sender.send_ids([rid], ignore_window=True)
        with engine.connect() as conn:
            assert ledger.due_ids(conn, now=datetime.now(UTC)) == [rid]
        assert provider.sent == []

        cli.ok("org", "enable", slug)
        sender.send_ids([rid], ignore_window=True)
    finally:
        sender.close()
    assert [to for to, _, _ in provider.sent] == ["+14155552671"]

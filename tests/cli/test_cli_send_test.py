"""``reminders send-test``: one real text, shown in ``messages`` as a test, never a reminder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import Cli, count, write_csv
from freezegun import freeze_time
from sqlalchemy import Engine

from tests.twilio_fake import DEFAULT_FROM, FakeTwilio

IN_WINDOW = "2030-06-10 14:00:00"  # 10:00 in New York


@pytest.fixture
def sms_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "sms.log"
    monkeypatch.setenv("SMS_CONSOLE_OUTPUT", str(path))
    return path


@pytest.fixture
def acme(cli: Cli) -> str:
    cli.ok("org", "add", "acme", "--name", "Acme Fiber", "--timezone", "America/New_York")
    return "acme"


def _texts(sms_log: Path) -> list[tuple[str, str]]:
    lines = sms_log.read_text(encoding="utf-8").splitlines() if sms_log.exists() else []
    return [(line.split("\t")[2], line.split("\t")[3]) for line in lines]


@freeze_time(IN_WINDOW)
def test_a_test_text_goes_out_is_marked_and_never_counts_or_blocks_a_reminder(
    db: Engine, cli: Cli, acme: str, sms_log: Path, tmp_path: Path
) -> None:
    rows = [("c1", "Ada", "+1 202 555 0101", "s1", "Fiber", "2030-06-15")]  # due today, lead 5
    cli.ok("import", acme, write_csv(tmp_path / "a.csv", rows))

    out = cli.ok("send-test", acme, "(202) 555-0101").out

    assert out.startswith("sent test text 1 to +12025550101 for acme via console (lead 5")
    [(to, body)] = _texts(sms_log)
    assert to == "+12025550101"
    assert "Alex Example" in body and "Acme Fiber" in body and "5 days" in body
    [test] = cli.json("messages")
    assert (test["test"], test["status"], test["org"], test["body"]) == (True, "sent", acme, body)
    assert test["provider_message_id"].startswith("CONSOLE-")
    assert "test 1" in cli.ok("messages").out
    assert cli.json("status") == {"acme": {}}
    assert count(db, "reminders") == 0

    summary = cli.json("run")  # the same number's real reminder still goes, counted alone

    assert (summary["planned"], summary["sent"]) == (1, 1)
    assert [m["test"] for m in cli.json("messages")] == [False, True]
    assert cli.json("status") == {"acme": {"sent": 1}}
    assert [to for to, _ in _texts(sms_log)] == ["+12025550101", "+12025550101"]


@freeze_time(IN_WINDOW)
def test_lead_picks_the_days_rendered_and_json_reports_it(
    db: Engine, cli: Cli, acme: str, sms_log: Path
) -> None:
    sent = cli.json("send-test", acme, "+1 202 555 0102", "--lead", "1")

    assert (sent["lead_days"], sent["phone"], sent["segments"]) == (1, "+12025550102", 1)
    assert "expires tomorrow" in sent["body"]
    [test] = cli.json("messages", "--status", "sent")
    assert test["lead_days"] == 1 and test["test"] is True


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("acme", "call me"), "not a phone number: 'call me'"),
        (("acme", "+12025550110"), "opted out of acme texts"),
        (("ghost", "+12025550101"), "no organization 'ghost'"),
        (("acme", "+12025550101", "--lead", "400"), "--lead 400"),
        (("off", "+12025550101"), "organization off is disabled"),
    ],
)
def test_refused_test_texts_send_and_record_nothing(
    sqlite_db: Engine, cli: Cli, acme: str, sms_log: Path, args: tuple[str, ...], expected: str
) -> None:
    cli.ok("opt-out", acme, "+12025550110")
    cli.ok("org", "add", "off", "--name", "Off", "--timezone", "America/New_York")
    cli.ok("org", "disable", "off")

    error = cli("send-test", *args).error

    assert expected in error
    assert _texts(sms_log) == []
    assert count(sqlite_db, "test_messages") == 0


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


def test_through_twilio_a_refusal_is_one_line_and_recorded_as_failed(
    db: Engine, cli: Cli, acme: str, fake: FakeTwilio
) -> None:
    env = {
        "SMS_PROVIDER": "twilio",
        "TWILIO_ACCOUNT_SID": fake.account_sid,
        "TWILIO_AUTH_TOKEN": fake.auth_token,
        "TWILIO_FROM_NUMBER": DEFAULT_FROM,
        "TWILIO_API_BASE_URL": fake.base_url,
    }
    cli.ok("send-test", acme, "+12025550101", env=env)
    fake.fail("+12025550103", 21610, message="Attempt to send to unsubscribed recipient")

    error = cli("send-test", acme, "+12025550103", env=env).error

    assert error.startswith("error: the test text to +12025550103 was not sent: ")
    assert "unsubscribed recipient" in error
    assert error.endswith(
        "; recorded as test message 2; +12025550103 is now opted out of acme texts"
    )
    assert [m.to for m in fake.messages] == ["+12025550101"]
    tests = cli.json("messages")
    assert [(m["phone"], m["status"]) for m in tests] == [
        ("+12025550101", "sent"),
        ("+12025550103", "failed"),
    ]
    assert tests[0]["provider_message_id"] == fake.messages[0].sid
    assert tests[1]["error_code"] == "21610"
    assert count(db, "reminders") == 0
    assert "opted out" in cli("send-test", acme, "+12025550103", env=env).error

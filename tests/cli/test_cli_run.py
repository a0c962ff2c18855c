"""``reminders run``, ``messages``, ``status``, ``opt-out``/``opt-in``: what a user sees day to day.

Acme is in New York (window 08:00-21:00, lead days 5,3,1). At 14:00 UTC on 2030-06-10 it is
10:00 there, so the day's texts go out; at 05:00 UTC it is 01:00 and they are held.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cli_support import Cli, count, write_csv
from freezegun import freeze_time
from sqlalchemy import Engine, insert, select

from app.db.models import DEFAULT_TEMPLATE_LEAD, Organization, Template

IN_WINDOW = "2030-06-10 14:00:00"
BEFORE_WINDOW = "2030-06-10 05:00:00"
CUSTOMERS = [
    ("c1", "Ada", "+1 202 555 0101", "s1", "Fiber", "2030-06-15"),  # 5 days: lead 5
    ("c2", "Bob", "+1 202 555 0102", "s2", "Fiber", "2030-06-13"),  # 3 days: lead 3
    ("c3", "Cy", "+1 202 555 0103", "s3", "Fiber", "2030-06-11"),  # 1 day: lead 1
    ("c4", "Di", "+1 202 555 0104", "s4", "Fiber", "2030-06-20"),  # 10 days: nothing yet
    ("c5", "Ed", "+1 202 555 0105", "s5", "Fiber", "2030-06-01"),  # expired: nothing
    ("c6", "Fay", "+1 202 555 0106", "s6", "Fiber", "2030-06-14"),  # 4 days: lead 5
]
DUE_TODAY = {"s1": 5, "s2": 3, "s3": 1, "s6": 5}  # subscription -> lead day on 2030-06-10


@pytest.fixture
def sms_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The console provider appends every text it sends to this file."""
    path = tmp_path / "sms.log"
    monkeypatch.setenv("SMS_CONSOLE_OUTPUT", str(path))
    return path


def sent_texts(sms_log: Path) -> list[tuple[str, str]]:
    if not sms_log.exists():
        return []
    lines = sms_log.read_text(encoding="utf-8").splitlines()
    return [(line.split("\t")[2], line.split("\t")[3]) for line in lines]


def add_org(cli: Cli, slug: str, tz: str = "America/New_York", *extra: str) -> str:
    cli.ok("org", "add", slug, "--name", slug.title(), "--timezone", tz, *extra)
    return slug


@pytest.fixture
def acme(cli: Cli, tmp_path: Path, sms_log: Path) -> str:
    add_org(cli, "acme")
    cli.ok("import", "acme", write_csv(tmp_path / "acme.csv", CUSTOMERS))
    return "acme"


def by_sub(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["subscription_id"]: r for r in rows}


@freeze_time(IN_WINDOW)
def test_dry_run_lists_what_would_go_out_and_writes_nothing(
    db: Engine, cli: Cli, acme: str, sms_log: Path
) -> None:
    out = cli.ok("run", "--dry-run").out.splitlines()

    assert out[-1] == "dry run: 4 would be planned, 4 due; nothing was written"
    assert sorted(line.split(" [")[0] for line in out[:-1]) == [
        "SEND acme +12025550101",
        "SEND acme +12025550102",
        "SEND acme +12025550103",
        "SEND acme +12025550106",
    ]
    assert any("[5d]: Hi Ada, your Acme Fiber plan expires in 5 days" in line for line in out)
    assert count(db, "reminders") == 0
    assert count(db, "daily_runs") == 0
    assert cli.json("messages") == []
    assert cli.json("status") == {"acme": {}}
    assert sent_texts(sms_log) == []


@freeze_time(IN_WINDOW)
def test_dry_run_json_then_a_real_run_still_sends_everything(
    db: Engine, cli: Cli, acme: str
) -> None:
    dry = cli.json("run", "--dry-run")

    assert dry["dry_run"] is True
    assert dry["planned"] == 4
    assert sorted(w["phone"][-2:] for w in dry["would_send"]) == ["01", "02", "03", "06"]
    assert count(db, "reminders") == 0
    assert cli.json("run")["sent"] == 4


@freeze_time(BEFORE_WINDOW)
def test_dry_run_outside_the_window_shows_held_texts(db: Engine, cli: Cli, acme: str) -> None:
    out = cli.ok("run", "--dry-run").out.splitlines()

    assert all(line.startswith("HOLD (outside window) acme") for line in out[:-1])
    assert len(out) == 5
    assert count(db, "reminders") == 0


@freeze_time(IN_WINDOW)
def test_run_sends_due_texts_once_and_a_second_run_sends_nothing(
    db: Engine, cli: Cli, acme: str, sms_log: Path
) -> None:
    first = cli.json("run")

    assert first["dates"] == {"acme": "2030-06-10"}
    assert {k: first[k] for k in ("planned", "sent", "failed", "skipped")} == {
        "planned": 4,
        "sent": 4,
        "failed": 0,
        "skipped": 0,
    }
    rows = by_sub(cli.json("messages"))
    assert {s: r["lead_days"] for s, r in rows.items()} == DUE_TODAY
    assert {r["status"] for r in rows.values()} == {"sent"}

    second = cli.json("run")

    assert {k: second[k] for k in ("planned", "sent", "failed", "skipped")} == {
        "planned": 0,
        "sent": 0,
        "failed": 0,
        "skipped": 0,
    }
    assert count(db, "reminders") == 4
    assert sorted(to for to, _ in sent_texts(sms_log)) == [
        "+12025550101",
        "+12025550102",
        "+12025550103",
        "+12025550106",
    ]


@freeze_time(IN_WINDOW)
def test_plain_run_output_and_logs_go_to_stderr(db: Engine, cli: Cli, acme: str) -> None:
    result = cli.ok("run")

    assert result.out.splitlines() == [
        "planned 4, sent 4, failed 0, skipped 0, held 0, retrying 0, unknown 0",
        "day's totals so far (each organization's today): sent 4, failed 0, skipped 0, "
        "pending 0, sending 0, unknown 0",
    ]
    assert result.err.count("SMS to +12*******01") == 1  # the console provider masks numbers


@freeze_time(IN_WINDOW)
def test_messages_json_rows_have_every_documented_field(db: Engine, cli: Cli, acme: str) -> None:
    cli.ok("run")

    row = by_sub(cli.json("messages"))["s1"]

    assert {
        k: row[k]
        for k in (
            "org",
            "customer_id",
            "subscription_id",
            "phone",
            "lead_days",
            "days_left",
            "expires_on",
            "status",
            "reason",
            "segments",
            "encoding",
            "attempts",
            "error_code",
        )
    } == {
        "org": "acme",
        "customer_id": "c1",
        "subscription_id": "s1",
        "phone": "+12025550101",
        "lead_days": 5,
        "days_left": 5,
        "expires_on": "2030-06-15",
        "status": "sent",
        "reason": None,
        "segments": 1,
        "encoding": "GSM-7",
        "attempts": 1,
        "error_code": None,
    }
    assert row["body"] == (
        "Hi Ada, your Acme Fiber plan expires in 5 days (2030-06-15). Renew now to stay connected."
    )
    assert row["provider_message_id"].startswith("CONSOLE-")


@freeze_time(IN_WINDOW)
def test_messages_filters_and_status_counts(
    db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    add_org(cli, "beta", "Europe/London")
    beta = [("b1", "Bea", "+44 7911 123456", "t1", "Gold", "2030-06-11")]
    cli.ok("import", "beta", write_csv(tmp_path / "beta.csv", beta))
    cli.ok("opt-out", "acme", "+1 202 555 0102")
    cli.ok("run")

    assert cli.json("status") == {"acme": {"sent": 3, "skipped": 1}, "beta": {"sent": 1}}
    assert cli.json("status", "--date", "2030-06-09") == {"acme": {}, "beta": {}}
    assert [m["org"] for m in cli.json("messages", "--org", "beta")] == ["beta"]
    skipped = cli.json("messages", "--status", "skipped")
    assert [(m["customer_id"], m["reason"]) for m in skipped] == [("c2", "opted_out")]
    assert len(cli.json("messages", "--date", "2030-06-10")) == 5
    assert cli.json("messages", "--date", "2030-06-11") == []
    assert len(cli.json("messages", "--limit", "2")) == 2
    text = cli.ok("status").out
    assert "acme" in text and "sent 3, skipped 1" in text


def test_messages_and_status_refuse_bad_input(sqlite_db: Engine, cli: Cli) -> None:
    assert "'ghost'" in cli("messages", "--org", "ghost").error
    assert "--status" in cli("messages", "--status", "lost").error
    assert "2030-13-01" in cli("status", "--date", "2030-13-01").error


@freeze_time(IN_WINDOW)
def test_org_option_is_repeatable_and_unknown_org_is_refused(
    db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    for slug in ("beta", "gamma"):
        add_org(cli, slug)
        rows = [(f"{slug}1", "Zed", "+1 202 555 0199", f"{slug}-s", "Gold", "2030-06-13")]
        cli.ok("import", slug, write_csv(tmp_path / f"{slug}.csv", rows))

    refused = cli("run", "--org", "acme", "--org", "nope")
    assert "'nope'" in refused.error
    assert count(db, "reminders") == 0

    summary = cli.json("run", "--org", "acme", "--org", "gamma")

    assert sorted(summary["dates"]) == ["acme", "gamma"]
    assert summary["sent"] == 5
    assert {m["org"] for m in cli.json("messages")} == {"acme", "gamma"}
    assert cli.json("run", "--org", "beta")["sent"] == 1


@freeze_time(IN_WINDOW)
def test_a_back_dated_run_previews_and_sends_nothing(
    db: Engine, cli: Cli, acme: str, sms_log: Path
) -> None:
    """R3, issue 13 case 1: a run for yesterday after today's texts went out texts no one
    again; it says so in one line and writes nothing."""
    first = cli.json("run")
    assert first["sent"] == 4
    before = cli.json("messages")

    result = cli("run", "--date", "2030-06-09", "--org", "acme")

    assert result.code == 0
    assert result.err.strip() == (
        "note: 2030-06-09 is not today in acme (today: 2030-06-10): planned and previewed for it "
        "as a dry run; nothing was sent or written for it"
    )
    assert "SEND acme" in result.out  # the preview of that day
    assert cli.json("messages") == before
    assert len(sent_texts(sms_log)) == 4
    summary = cli.json("run", "--date", "2030-06-11", "--json")
    assert (summary["dry_run"], summary["sent"], summary["previewed"]) == (
        True,
        0,
        {"acme": "2030-06-10"},
    )
    assert cli.json("messages") == before


def test_a_date_equal_to_today_is_a_plain_run(db: Engine, cli: Cli, acme: str) -> None:
    with freeze_time("2030-06-12 14:00:00"):
        summary = cli.json("run", "--date", "2030-06-12")

    assert summary["dates"] == {"acme": "2030-06-12"}
    rows = by_sub(cli.json("messages"))
    # Catch-up rule: on the 12th, s1 (3 days left) gets its 3-day text, not the missed 5-day one.
    assert {s: (r["lead_days"], r["days_left"]) for s, r in rows.items()} == {
        "s1": (3, 3),
        "s2": (1, 1),
        "s6": (3, 2),
    }
    assert {r["expires_on"] for r in rows.values()} == {"2030-06-15", "2030-06-13", "2030-06-14"}
    assert "expires in 2 days" in rows["s6"]["body"]
    assert "expires tomorrow" in rows["s2"]["body"]
    assert (summary["sent"], summary["previewed"]) == (3, {})
    assert "2030-13-45" in cli("run", "--date", "2030-13-45").error


def test_ignore_window_releases_texts_already_held(
    db: Engine, cli: Cli, acme: str, sms_log: Path
) -> None:
    """R4, issue 13 case 3: a run outside the window holds; --ignore-window sends them now."""
    with freeze_time(BEFORE_WINDOW):
        held = cli.json("run")
        status = cli.ok("status").out
        released = cli.json("run", "--ignore-window")

    assert (held["held"], held["held_until"]) == (4, {"acme": "2030-06-10T12:00:00+00:00"})
    assert "held for the window until 2030-06-10 12:00 UTC" in status
    assert (released["planned"], released["sent"], released["held"]) == (0, 4, 0)
    assert {m["status"] for m in cli.json("messages")} == {"sent"}
    assert len(sent_texts(sms_log)) == 4


def test_texts_outside_the_window_are_held_then_sent_when_it_opens(
    db: Engine, cli: Cli, acme: str, sms_log: Path
) -> None:
    with freeze_time(BEFORE_WINDOW):
        held = cli.json("run")

    assert (held["planned"], held["sent"], held["held"]) == (4, 0, 4)
    assert {m["status"] for m in cli.json("messages")} == {"pending"}
    assert sent_texts(sms_log) == []

    with freeze_time("2030-06-10 07:00:00"):  # 03:00 in New York: still closed
        assert cli.json("run")["sent"] == 0
    with freeze_time("2030-06-10 12:30:00"):  # 08:30: open
        later = cli.json("run")

    assert (later["planned"], later["sent"]) == (0, 4)
    rows = by_sub(cli.json("messages"))
    assert {s: (r["status"], r["days_left"]) for s, r in rows.items()} == {
        "s1": ("sent", 5),
        "s2": ("sent", 3),
        "s3": ("sent", 1),
        "s6": ("sent", 4),
    }
    assert len(sent_texts(sms_log)) == 4


def test_held_texts_sent_next_day_say_the_real_days_left(
    db: Engine, cli: Cli, acme: str, sms_log: Path
) -> None:
    with freeze_time(BEFORE_WINDOW):
        cli.ok("run")
    with freeze_time("2030-06-11 13:00:00"):  # next day, 09:00 in New York
        cli.ok("run")

    rows = {(r["subscription_id"], r["lead_days"]): r for r in cli.json("messages")}
    assert {k: (r["status"], r["days_left"], r["reason"]) for k, r in rows.items()} == {
        ("s1", 5): ("sent", 4, None),
        ("s2", 3): ("sent", 2, None),
        # R5: the held 1-day text still goes on the expiry day, saying so.
        ("s3", 1): ("sent", 0, None),
        # Held with 4 days left, it has 3 today: the 3-day text planned today goes instead.
        ("s6", 5): ("skipped", 4, "superseded: the 3-day reminder goes instead"),
        ("s6", 3): ("sent", 3, None),
    }
    assert "expires in 4 days" in rows[("s1", 5)]["body"]
    assert "expires in 2 days" in rows[("s2", 3)]["body"]
    assert "expires today" in rows[("s3", 1)]["body"]
    bodies = [body for _to, body in sent_texts(sms_log)]
    assert not any("expires in 5 days" in b for b in bodies), "a stale text went out"


@freeze_time(BEFORE_WINDOW)
def test_ignore_window_sends_at_night(db: Engine, cli: Cli, acme: str) -> None:
    summary = cli.json("run", "--ignore-window")

    assert (summary["sent"], summary["held"]) == (4, 0)


@freeze_time(IN_WINDOW)
def test_opt_out_and_opt_in_round_trip_affects_the_next_run(
    db: Engine, cli: Cli, acme: str, sms_log: Path
) -> None:
    assert "+12025550101 opted out of acme texts" in cli.ok("opt-out", "acme", "(202) 555-0101").out

    first = cli.json("run")

    assert (first["sent"], first["skipped"]) == (3, 1)
    s1 = by_sub(cli.json("messages"))["s1"]
    assert (s1["status"], s1["reason"]) == ("skipped", "opted_out")
    assert "+12025550101" not in [to for to, _ in sent_texts(sms_log)]

    assert "+12025550101 opted in to acme texts" in cli.ok("opt-in", "acme", "202-555-0101").out
    with freeze_time("2030-06-12 14:00:00"):
        cli.ok("run")  # the 3-day reminder

    texts_to_ada = [body for to, body in sent_texts(sms_log) if to == "+12025550101"]
    assert len(texts_to_ada) == 1 and "expires in 3 days" in texts_to_ada[0]


def test_opt_out_after_planning_stops_a_held_text(
    db: Engine, cli: Cli, acme: str, sms_log: Path
) -> None:
    with freeze_time(BEFORE_WINDOW):
        cli.ok("run")
    cli.ok("opt-out", "acme", "+12025550102")
    with freeze_time(IN_WINDOW):
        summary = cli.json("run")

    assert (summary["sent"], summary["skipped"]) == (3, 1)
    s2 = by_sub(cli.json("messages"))["s2"]
    assert (s2["status"], s2["reason"]) == ("skipped", "opted_out")


def test_opt_out_and_opt_in_say_whether_anything_changed(db: Engine, cli: Cli) -> None:
    add_org(cli, "acme")

    assert cli.ok("opt-out", "acme", "(202) 555-0101").out == (
        "+12025550101 opted out of acme texts\n"
    )
    assert cli.ok("opt-out", "acme", "+1 202 555 0101").out == (
        "+12025550101 opted out of acme texts (no change)\n"
    )
    assert cli.ok("opt-in", "acme", "202-555-0101").out == "+12025550101 opted in to acme texts\n"
    assert cli.ok("opt-in", "acme", "202-555-0101").out == (
        "+12025550101 opted in to acme texts (no change)\n"
    )
    assert count(db, "opt_outs") == 0


def test_opt_out_refuses_bad_number_and_unknown_org(sqlite_db: Engine, cli: Cli) -> None:
    add_org(cli, "acme")
    assert "not-a-phone" in cli("opt-out", "acme", "not-a-phone").error
    assert "'ghost'" in cli("opt-out", "ghost", "+12025550101").error
    assert count(sqlite_db, "opt_outs") == 0


@freeze_time(IN_WINDOW)
def test_renewal_starts_a_fresh_cycle(db: Engine, cli: Cli, acme: str, tmp_path: Path) -> None:
    cli.ok("run")
    renewed = [("c1", "Ada", "+1 202 555 0101", "s1", "Fiber", "2030-07-15")]
    cli.ok("import", "acme", write_csv(tmp_path / "renew.csv", renewed))

    with freeze_time("2030-06-12 14:00:00"):
        assert cli.json("run", "--org", "acme")["planned"] == 2  # s2, s6
    assert "s1" not in {m["subscription_id"] for m in cli.json("messages", "--date", "2030-06-12")}
    with freeze_time("2030-07-10 14:00:00"):
        cli.ok("run")

    s1 = [m for m in cli.json("messages") if m["subscription_id"] == "s1"]
    assert [(m["expires_on"], m["lead_days"], m["status"]) for m in s1] == [
        ("2030-06-15", 5, "sent"),
        ("2030-07-15", 5, "sent"),
    ]


def test_renewal_after_planning_skips_the_held_text(
    db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    with freeze_time(BEFORE_WINDOW):
        cli.ok("run")
    renewed = [("c1", "Ada", "+1 202 555 0101", "s1", "Fiber", "2031-06-15")]
    cli.ok("import", "acme", write_csv(tmp_path / "renew.csv", renewed))
    with freeze_time(IN_WINDOW):
        cli.ok("run")

    s1 = by_sub(cli.json("messages"))["s1"]
    assert (s1["status"], s1["reason"]) == ("skipped", "renewed")


def test_organizations_on_both_sides_of_utc_get_their_own_day(
    db: Engine, cli: Cli, tmp_path: Path, sms_log: Path
) -> None:
    add_org(cli, "kiwi", "Pacific/Auckland", "--send-window", "00:00-00:00", "--country", "NZ")
    add_org(cli, "la", "America/Los_Angeles", "--send-window", "00:00-00:00")
    both = [("c1", "Ana", "+1 202 555 0101", "s1", "Gold", "2030-06-15")]
    cli.ok("import", "kiwi", write_csv(tmp_path / "k.csv", both))
    cli.ok("import", "la", write_csv(tmp_path / "l.csv", both))

    with freeze_time("2030-06-10 20:00:00"):  # Auckland: 06-11 08:00; Los Angeles: 06-10 13:00
        summary = cli.json("run")

    assert summary["dates"] == {"kiwi": "2030-06-11", "la": "2030-06-10"}
    rows = {m["org"]: (m["lead_days"], m["days_left"]) for m in cli.json("messages")}
    assert rows == {"kiwi": (5, 4), "la": (5, 5)}


@freeze_time(IN_WINDOW)
def test_a_stored_template_that_fails_for_one_customer_falls_back_to_the_default(
    db: Engine, cli: Cli, tmp_path: Path
) -> None:
    """R7: a template stored before the checks (or one that fails another way) still gives the
    customer a whole sentence: the built-in wording, recorded on the row."""
    add_org(cli, "acme")
    with db.begin() as conn:
        conn.execute(
            insert(Template).values(
                org_id=select(Organization.id).where(Organization.slug == "acme").scalar_subquery(),
                lead_days=DEFAULT_TEMPLATE_LEAD,
                body="{{ customer.name }}: {{ subscription.amount + 1 }} due",
                updated_at=datetime.now(UTC),
            )
        )
    header = ("customer_id", "name", "phone", "subscription_id", "plan", "expires_on", "amount")
    rows = [
        ("c1", "Ada", "+1 202 555 0101", "s1", "Fiber", "2030-06-15", "10"),
        ("c2", "Bob", "+1 202 555 0102", "s2", "Fiber", "2030-06-15", ""),  # no amount
    ]
    cli.ok("import", "acme", write_csv(tmp_path / "a.csv", rows, header))

    summary = cli.json("run")

    assert (summary["planned"], summary["sent"], summary["failed"]) == (2, 2, 0)
    rows_by_sub = by_sub(cli.json("messages"))
    assert rows_by_sub["s1"]["body"] == "Ada: 11.00 due"
    assert rows_by_sub["s1"]["template_fallback"] is None
    bob = rows_by_sub["s2"]
    assert bob["status"] == "sent"
    assert bob["body"].startswith("Hi Bob, your Acme Fiber plan expires in 5 days")
    assert "NoneType" in bob["template_fallback"]


def test_run_refuses_contradictory_options(sqlite_db: Engine, cli: Cli) -> None:
    assert "--enqueue" in cli("run", "--wait").error
    assert "--dry-run" in cli("run", "--dry-run", "--enqueue").error
    assert count(sqlite_db, "reminders") == 0

"""``reminders import``: upserts by external id; one bad row stores nothing from the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import HEADER, Cli, count, subscriptions, write_csv
from freezegun import freeze_time
from sqlalchemy import Engine

GOOD = [
    ("c1", "Ada Lovelace", "+1 202 555 0101", "s1", "Fiber 500", "2030-06-15"),
    ("c2", "Grace Hopper", "(202) 555-0102", "s2", "Fiber 1000", "2030-06-13"),
    ("c2", "Grace Hopper", "(202) 555-0102", "s3", "TV", "2030-07-01"),
]


@pytest.fixture
def acme(cli: Cli) -> str:
    cli.ok("org", "add", "acme", "--name", "Acme", "--timezone", "America/New_York")
    return "acme"


def test_good_csv_is_stored_and_reported(db: Engine, cli: Cli, acme: str, tmp_path: Path) -> None:
    result = cli.ok("import", acme, write_csv(tmp_path / "a.csv", GOOD))

    assert "imported 3 subscriptions for 2 customers" in result.out
    assert "0 invalid phone numbers" in result.out
    assert count(db, "customers") == 2
    assert subscriptions(db) == {
        "s1": ("2030-06-15", "active"),
        "s2": ("2030-06-13", "active"),
        "s3": ("2030-07-01", "active"),
    }


def test_reimport_upserts_by_external_id(db: Engine, cli: Cli, acme: str, tmp_path: Path) -> None:
    cli.ok("import", acme, write_csv(tmp_path / "a.csv", GOOD))
    renewed = [
        ("c1", "Ada King", "+1 202 555 0101", "s1", "Fiber 500", "2030-07-15", "", "", ""),
        (
            "c2",
            "Grace Hopper",
            "(202) 555-0102",
            "s2",
            "Fiber 1000",
            "2030-06-13",
            "",
            "",
            "cancelled",
        ),
    ]
    header = (*HEADER, "amount", "currency", "status")

    cli.ok("import", acme, write_csv(tmp_path / "b.csv", renewed, header))

    assert count(db, "customers") == 2
    assert subscriptions(db) == {
        "s1": ("2030-07-15", "active"),
        "s2": ("2030-06-13", "cancelled"),
        "s3": ("2030-07-01", "active"),
    }


def test_optional_columns_and_bom_and_blank_lines(
    db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    path = tmp_path / "excel.csv"
    path.write_text(
        "\ufeffcustomer_id,name,phone,subscription_id,plan,expires_on,amount,currency,status\r\n"
        "c1,Ada,+1 202 555 0101,s1,Fiber,2030-06-15,49.90,usd,Active\r\n"
        "\r\n"
        'c2,"Hopper, Grace",202-555-0102,s2,Fiber,2030-06-13,,,\r\n',
        encoding="utf-8",
    )

    cli.ok("import", acme, path)

    assert subscriptions(db) == {"s1": ("2030-06-15", "active"), "s2": ("2030-06-13", "active")}


BAD_ROWS = {
    "bad date": (
        ("c9", "Bad", "+1 202 555 0109", "s9", "Fiber", "2030-02-30"),
        "line 3: expires_on '2030-02-30'",
    ),
    "empty name": (
        ("c9", "", "+1 202 555 0109", "s9", "Fiber", "2030-06-20"),
        "line 3: name is empty",
    ),
    "empty subscription_id": (
        ("c9", "X", "+1 202 555 0109", " ", "Fiber", "2030-06-20"),
        "line 3: subscription_id is empty",
    ),
    "bad status": (
        ("c9", "X", "+1 202 555 0109", "s9", "Fiber", "2030-06-20", "", "", "paused"),
        "line 3: status 'paused'",
    ),
    "bad amount": (
        ("c9", "X", "+1 202 555 0109", "s9", "Fiber", "2030-06-20", "ten", "", ""),
        "line 3: amount 'ten'",
    ),
    "duplicate subscription_id": (
        ("c9", "X", "+1 202 555 0109", "s1", "Fiber", "2030-06-20"),
        "line 3: subscription_id 's1' already on line 2",
    ),
    "extra field": (
        ("c9", "X", "+1 202 555 0109", "s9", "Fiber", "2030-06-20", "", "", "", "surprise"),
        "line 3: more fields than the header has",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_one_bad_row_stores_nothing_and_names_line_and_reason(
    db: Engine, cli: Cli, acme: str, tmp_path: Path, case: str
) -> None:
    cli.ok("import", acme, write_csv(tmp_path / "before.csv", GOOD))
    row, expected = BAD_ROWS[case]
    header = (*HEADER, "amount", "currency", "status")
    changed = ("c1", "Ada Changed", "+1 202 555 0101", "s1", "Fiber 500", "2031-01-01", "", "", "")
    new = ("c8", "New Person", "+1 202 555 0108", "s8", "Fiber", "2030-06-20", "", "", "")
    path = write_csv(tmp_path / "bad.csv", [changed, row, new], header)

    result = cli("import", acme, path)

    assert expected in result.error
    assert result.out == ""
    assert count(db, "customers") == 2
    assert subscriptions(db)["s1"] == ("2030-06-15", "active"), "a stored row was changed"
    assert set(subscriptions(db)) == {"s1", "s2", "s3"}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "customer_id,name,phone,subscription_id,plan\nc1,A,+12025550101,s1,P\n",
            "line 1: header is missing expires_on",
        ),
        (
            "customer_id,name,phone,subscription_id,plan,expires_on,colour\n",
            "line 1: unknown column colour",
        ),
        ("", "the file is empty"),
        ("\n\n", "the file is empty"),
        (
            "customer_id;name;phone;subscription_id;plan;expires_on\nc1;A;+12025550101;s1;P;2030"
            "-06-15\n",
            "separated by semicolons (';'), not commas",
        ),
        (
            "Customer_ID,Name,phone,subscription_id,plan,expires_on\n",
            "column names are lowercase: found Customer_ID, Name",
        ),
    ],
)
def test_bad_header_is_refused(
    sqlite_db: Engine, cli: Cli, acme: str, tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "h.csv"
    path.write_text(content, encoding="utf-8")

    assert expected in cli("import", acme, path).error
    assert count(sqlite_db, "customers") == 0


def test_missing_file_and_non_utf8_file_are_one_line_errors(
    sqlite_db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    assert "nope.csv" in cli("import", acme, tmp_path / "nope.csv").error
    latin = tmp_path / "latin.csv"
    latin.write_bytes(",".join(HEADER).encode() + b"\nc1,Ren\xe9,+12025550101,s1,P,2030-06-15\n")
    assert "UTF-8" in cli("import", acme, latin).error
    assert count(sqlite_db, "customers") == 0


def test_import_into_unknown_org_is_refused(sqlite_db: Engine, cli: Cli, tmp_path: Path) -> None:
    result = cli("import", "ghost", write_csv(tmp_path / "a.csv", GOOD))

    assert "'ghost'" in result.error
    assert count(sqlite_db, "customers") == 0


def test_skip_invalid_stores_good_rows_and_lists_bad_ones(
    db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    rows = [
        GOOD[0],
        ("c5", "Bad Date", "+1 202 555 0105", "s5", "Fiber", "tomorrow"),
        GOOD[1],
        ("c6", "", "+1 202 555 0106", "s6", "Fiber", "2030-06-20"),
    ]

    result = cli.ok("import", acme, "--skip-invalid", write_csv(tmp_path / "a.csv", rows))

    assert "2 bad rows skipped" in result.out
    bad = result.err.strip().splitlines()
    assert len(bad) == 2
    assert "line 3" in bad[0] and "expires_on 'tomorrow'" in bad[0]
    assert "line 5" in bad[1] and "name is empty" in bad[1]
    assert set(subscriptions(db)) == {"s1", "s2"}


@freeze_time("2030-06-10 14:00:00")  # 10:00 in New York: inside the send window
def test_invalid_phone_is_stored_and_later_skipped_with_reason(
    db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    rows = [
        ("c1", "Ada", "+1 202 555 0101", "s1", "Fiber", "2030-06-15"),
        ("c2", "Bob", "not-a-number", "s2", "Fiber", "2030-06-15"),
        ("c3", "Cy", "12345", "s3", "Fiber", "2030-06-13"),
        ("c4", "Di", "", "s4", "Fiber", "2030-06-13"),
    ]
    result = cli.ok("import", acme, write_csv(tmp_path / "a.csv", rows))
    assert "3 invalid phone numbers" in result.out
    assert count(db, "customers") == 4

    summary = cli.json("run")

    assert (summary["sent"], summary["skipped"]) == (1, 3)
    skipped = cli.json("messages", "--status", "skipped")
    assert sorted((m["customer_id"], m["reason"], m["phone"]) for m in skipped) == [
        ("c2", "invalid_phone", "not-a-number"),
        ("c3", "invalid_phone", "12345"),
        ("c4", "invalid_phone", ""),
    ]


def test_national_numbers_use_the_org_country(db: Engine, cli: Cli, tmp_path: Path) -> None:
    cli.ok("org", "add", "paris", "--name", "P", "--timezone", "Europe/Paris", "--country", "FR")
    rows = [("c1", "Amélie", "06 12 34 56 78", "s1", "Fibre", "2030-06-15")]

    result = cli.ok("import", "paris", write_csv(tmp_path / "fr.csv", rows))

    assert "0 invalid phone numbers" in result.out
    with freeze_time("2030-06-10 10:00:00"):
        cli.ok("run")
    [message] = cli.json("messages")
    assert message["phone"] == "+33612345678"
    assert "Amélie" in message["body"]


def test_header_with_a_repeated_column_is_refused(
    sqlite_db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    path = tmp_path / "dup.csv"
    path.write_text(
        "customer_id,name,phone,subscription_id,plan,expires_on,plan\n"
        "c1,Ada,+1 202 555 0101,s1,Gold,2030-06-15,Silver\n",
        encoding="utf-8",
    )

    result = cli("import", acme, path)

    assert "line 1" in result.error and "plan" in result.error
    assert count(sqlite_db, "subscriptions") == 0

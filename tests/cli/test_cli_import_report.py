"""``reminders import`` names every problem of a file at once, at the line where it starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import HEADER, Cli, count, write_csv
from sqlalchemy import Engine

HEAD = ",".join(HEADER)


@pytest.fixture
def acme(cli: Cli) -> str:
    cli.ok("org", "add", "acme", "--name", "Acme", "--timezone", "America/New_York")
    return "acme"


def _lines(n: int, start: int = 1) -> list[str]:
    return [
        f"c{i},Name {i},+1 202 555 01{i % 100:02d},s{i},Fiber,2030-06-15" for i in range(start, n)
    ]


def test_every_bad_row_is_listed_with_its_line_and_nothing_is_stored(
    db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    rows = [
        ("c1", "Ada", "+1 202 555 0101", "s1", "Fiber", "2030-06-15"),
        ("c2", "Bob", "+1 202 555 0102", "s2", "Fiber", "tomorrow"),
        ("c3", "", "+1 202 555 0103", "s3", "Fiber", "2030-06-15"),
        ("c4", "Cy", "+1 202 555 0104", "s4", "", "2030-06-15"),
    ]

    result = cli("import", acme, write_csv(tmp_path / "a.csv", rows))

    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert lines[-1] == (
        "error: 3 bad rows; nothing was imported (fix them, or --skip-invalid stores the good rows)"
    )
    assert [line.split(":")[0].strip() for line in lines[:-1]] == ["line 3", "line 4", "line 5"]
    assert "expires_on 'tomorrow'" in lines[0]
    assert "plan is empty" in lines[2]
    assert count(db, "customers") == 0


def test_more_than_a_hundred_bad_rows_are_listed_up_to_a_hundred_then_counted(
    sqlite_db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    path = tmp_path / "many.csv"
    bad = [f"c{i},,+12025550100,s{i},Fiber,2030-06-15" for i in range(130)]
    path.write_text("\n".join([HEAD, *bad]) + "\n", encoding="utf-8")

    result = cli("import", acme, path)

    lines = result.err.strip().splitlines()
    assert len(lines) == 102
    assert lines[0].strip() == "line 2: name is empty"
    assert lines[99].strip() == "line 101: name is empty"
    assert lines[100].strip() == "… and 30 more bad rows"
    assert lines[101].startswith("error: 130 bad rows; nothing was imported")


def test_invalid_phones_are_listed_stored_and_said_to_get_no_text(
    db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    rows = [
        ("c1", "Ada", "+1 202 555 0101", "s1", "Fiber", "2030-06-15"),
        ("c2", "Bob", "call me", "s2", "Fiber", "2030-06-15"),
    ]

    result = cli.ok("import", acme, write_csv(tmp_path / "a.csv", rows))

    [warning] = result.err.strip().splitlines()
    assert warning.startswith("invalid phone, stored but gets no text: line 3: ")
    assert "'call me'" in warning
    assert "imported 2 subscriptions for 2 customers" in result.out
    assert "1 invalid phone number (they get no text)" in result.out
    assert count(db, "customers") == 2


def test_one_subscription_is_said_in_the_singular(
    sqlite_db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    rows = [("c1", "Ada", "+1 202 555 0101", "s1", "Fiber", "2030-06-15")]

    result = cli.ok("import", acme, write_csv(tmp_path / "a.csv", rows))

    assert "imported 1 subscription for 1 customer into acme; 0 invalid phone numbers" in (
        result.out
    )


def test_unterminated_quote_is_reported_where_it_starts(
    sqlite_db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    body = [*_lines(51, 1), 'c51,"Unclosed,+12025550151,s51,Fiber,2030-06-15', *_lines(101, 52)]
    path = tmp_path / "quote.csv"
    path.write_text("\n".join([HEAD, *body]) + "\n", encoding="utf-8")

    error = cli("import", acme, path).error

    assert error.startswith("error: line 52: unterminated quote")
    assert "line 101" in error
    assert count(sqlite_db, "customers") == 0


def test_unterminated_quote_closed_by_a_later_quote_is_still_an_unterminated_quote(
    sqlite_db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    path = tmp_path / "quote.csv"
    path.write_text(
        f'{HEAD}\nc1,Ada,+12025550101,s1,Fiber,2030-06-15\nc2,"Bob,+12025550102,s2,Fiber,'
        '2030-06-15\nc3,"Cy",+12025550103,s3,Fiber,2030-06-15\n',
        encoding="utf-8",
    )

    error = cli("import", acme, path).error

    assert error.startswith("error: line 3: unterminated quote"), error


def test_nul_byte_is_reported_at_its_line_not_as_a_database_problem(
    db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    path = tmp_path / "nul.csv"
    body = [*_lines(11000), "c11000,Na\x00me,+12025550100,s11000,Fiber,2030-06-15"]
    path.write_text("\n".join([HEAD, *body]) + "\n", encoding="utf-8")

    error = cli("import", acme, path).error

    assert error == (
        "error: line 11001: name contains a NUL byte (\\x00); is this a text CSV file?"
    )
    assert "DATABASE_URL" not in error
    assert count(db, "customers") == 0

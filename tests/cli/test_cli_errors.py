"""Errors a new operator meets in the first minutes: each one line naming what to fix."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import Cli, run_script
from sqlalchemy import Engine


def test_unsupported_database_scheme_names_the_supported_ones_without_the_password(
    tmp_path: Path, cli: Cli
) -> None:
    error = cli("status", env={"DATABASE_URL": "mysql://app:hunter2@db/reminders"}).error

    assert error.startswith("error: DATABASE_URL='mysql://app:***@db/reminders': unsupported")
    assert "postgresql://" in error and "sqlite:///" in error
    assert "hunter2" not in error


@pytest.mark.parametrize("command", [("status",), ("run",), ("org", "list"), ("messages",)])
def test_bad_log_level_is_refused_the_same_way_by_every_command(
    sqlite_db: Engine, cli: Cli, command: tuple[str, ...]
) -> None:
    error = cli(*command, env={"LOG_LEVEL": "LOUD"}).error

    assert error == (
        "error: LOG_LEVEL='LOUD': expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'LOUD'"
    )


def test_log_level_is_accepted_in_any_case(sqlite_db: Engine, cli: Cli) -> None:
    assert cli("status", env={"LOG_LEVEL": "debug"}).code == 0


@pytest.mark.parametrize("value", ["XX", "ZZ"])
def test_default_country_without_phone_numbers_is_refused(
    sqlite_db: Engine, cli: Cli, value: str
) -> None:
    error = cli("org", "list", env={"REMINDER_DEFAULT_COUNTRY": value}).error

    assert error.startswith(f"error: REMINDER_DEFAULT_COUNTRY='{value}': {value} is not a country")


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (("nope",), "(see `reminders --help`)"),
        (("org", "add"), "(see `reminders org add --help`)"),
        (("run", "--bogus"), "(see `reminders run --help`)"),
    ],
)
def test_usage_errors_point_at_the_right_help(
    sqlite_db: Engine, cli: Cli, args: tuple[str, ...], hint: str
) -> None:
    result = cli(*args)

    assert result.code == 2
    assert result.error.endswith(hint)


def test_usage_error_of_the_installed_script_names_the_program_once(tmp_path: Path) -> None:
    result = run_script("nope", cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.strip() == "error: No such command 'nope'. (see `reminders --help`)"


def test_version_comes_from_the_package_metadata(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = run_script("--version", cwd=tmp_path)

    assert result.returncode == 0
    assert result.stdout.strip() == f"reminders {version('reminders')}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[int]:
    """A real Redis of our own that wants a password: its port."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            "right",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _enqueue(tmp_path: Path, redis_url: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/r.db", "REDIS_URL": redis_url}
    assert run_script("db", "upgrade", cwd=tmp_path, env=env).returncode == 0
    started = time.monotonic()
    result = run_script("run", "--enqueue", cwd=tmp_path, env=env)
    return result, time.monotonic() - started


@pytest.mark.timeout(60)
def test_unreachable_broker_is_one_fast_line_naming_it(tmp_path: Path) -> None:
    port = _free_port()

    result, took = _enqueue(tmp_path, f"redis://:s3cret@127.0.0.1:{port}/0")

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(
        f"error: cannot reach the broker at redis://:**@127.0.0.1:{port}/0"
    )
    assert "s3cret" not in result.stderr
    assert took < 10, f"took {took:.1f} s"


@pytest.mark.timeout(60)
def test_wrong_broker_password_is_one_line_naming_the_broker(
    tmp_path: Path, locked_redis: int
) -> None:
    result, took = _enqueue(tmp_path, f"redis://:wrong@127.0.0.1:{locked_redis}/0")

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert f"cannot reach the broker at redis://:**@127.0.0.1:{locked_redis}/0" in result.stderr
    assert "wrong" not in result.stderr.replace("is CELERY_BROKER_URL (or REDIS_URL) right", "")
    assert took < 10


@pytest.mark.parametrize("name", ["TWILIO_API_BASE_URL", "WEBHOOK_BASE_URL"])
@pytest.mark.parametrize("command", [("status",), ("org", "list")])
def test_a_base_url_that_is_no_url_is_refused_by_every_command(
    sqlite_db: Engine, cli: Cli, name: str, command: tuple[str, ...]
) -> None:
    error = cli(*command, env={name: "api.twilio.com"}).error

    assert error == (
        f"error: {name}='api.twilio.com': expected an http:// or https:// URL like "
        "https://example.com, got 'api.twilio.com'"
    )


@pytest.mark.parametrize("args", [("--help",), ("--version",), ("org", "add", "--help")])
def test_help_and_the_version_answer_even_with_a_bad_setting(
    cli: Cli, args: tuple[str, ...]
) -> None:
    """An operator reading the help to fix a setting is not refused by that setting."""
    result = cli(*args, env={"LOG_LEVEL": "LOUD"})
    assert result.code == 0, result.err
    assert result.out.startswith(("Usage: reminders", "reminders "))
    assert "LOG_LEVEL" in cli("status", env={"LOG_LEVEL": "LOUD"}).error  # the rest still refuse

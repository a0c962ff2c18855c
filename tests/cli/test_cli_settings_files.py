"""``NAME_FILE`` (the Docker secrets convention) for every setting; a plain ``NAME`` wins."""

from __future__ import annotations

from pathlib import Path

from cli_support import Cli, url_of
from sqlalchemy import Engine

from app.settings import Settings


def test_database_url_is_read_from_its_file(sqlite_db: Engine, cli: Cli, tmp_path: Path) -> None:
    secret = tmp_path / "database_url"
    secret.write_text(url_of(sqlite_db) + "\n", encoding="utf-8")
    env = {"DATABASE_URL": "", "DATABASE_URL_FILE": str(secret)}

    cli.ok("org", "add", "acme", "--name", "Acme", "--timezone", "Europe/Paris", env=env)

    assert [o["slug"] for o in cli.json("org", "list", env=env)] == ["acme"]


def test_a_plain_variable_wins_over_its_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n", encoding="utf-8")

    both = Settings.from_env({"REDIS_PASSWORD": "plain", "REDIS_PASSWORD_FILE": str(secret)})
    only_file = Settings.from_env({"REDIS_PASSWORD_FILE": str(secret)})

    assert both.redis_password == "plain"
    assert only_file.redis_password == "from-file"
    assert only_file.redis_connection_url == "redis://:from-file@127.0.0.1:6379/0"


def test_an_unreadable_file_is_one_line_naming_the_variable(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "nope"

    error = cli("status", env={"REDIS_PASSWORD_FILE": str(missing)}).error

    assert (
        error
        == f"error: REDIS_PASSWORD_FILE='{missing}': cannot read it (No such file or directory)"
    )


def test_a_bad_value_in_a_file_is_checked_like_the_variable(cli: Cli, tmp_path: Path) -> None:
    secret = tmp_path / "attempts"
    secret.write_text("many\n", encoding="utf-8")

    error = cli("status", env={"SMS_MAX_ATTEMPTS_FILE": str(secret)}).error

    assert error == "error: SMS_MAX_ATTEMPTS='many': expected a whole number, got 'many'"

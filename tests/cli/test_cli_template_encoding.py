"""``template set``/``preview`` and the characters that cost a text its GSM-7 encoding; a lead
day the organization never sends on; ``template remove`` (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import Cli, count
from sqlalchemy import Engine, select

from app.db.models import Template

# 80 characters: one GSM-7 segment, two UCS-2 ones.
PASTED = "Hi {{ customer.name }}, your plan’s ending soon – renew today to keep your fiber on."


@pytest.fixture
def gym(cli: Cli) -> str:
    cli.ok(
        "org",
        "add",
        "gym",
        "--name",
        "Gym",
        "--timezone",
        "UTC",
        "--country",
        "US",
        "--lead-days",
        "7,2,0",
    )
    return "gym"


def _file(tmp_path: Path, source: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / "t.j2"
    path.write_text(source, encoding=encoding)
    return path


def _stored(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(Template.body)).scalars())


def test_a_byte_order_mark_is_not_stored(
    sqlite_db: Engine, cli: Cli, gym: str, tmp_path: Path
) -> None:
    cli.ok("template", "set", gym, _file(tmp_path, "Hi {{ customer.name }}", "utf-8-sig"))

    assert _stored(sqlite_db) == ["Hi {{ customer.name }}"]
    assert "GSM-7" in cli.ok("preview", gym).out


def test_set_and_preview_name_the_lookalikes_with_their_cost(
    sqlite_db: Engine, cli: Cli, gym: str, tmp_path: Path
) -> None:
    note = (
        "  note: ’ (U+2019), – (U+2013) switch the text to UCS-2: 2 segments instead of 1 per "
        "text; template set --smart-encoding replaces them with their GSM-7 equivalents"
    )

    saved = cli.ok("template", "set", gym, _file(tmp_path, PASTED)).out.splitlines()
    assert saved.count(note) == 3  # one per lead day
    assert note in cli.ok("preview", gym).out.splitlines()


def test_smart_encoding_replaces_them_before_the_template_is_stored(
    sqlite_db: Engine, cli: Cli, gym: str, tmp_path: Path
) -> None:
    out = cli.ok("template", "set", gym, _file(tmp_path, PASTED), "--smart-encoding").out

    assert "smart encoding replaced ’ (U+2019) → \"'\", – (U+2013) → '-'" in out
    assert _stored(sqlite_db) == [PASTED.replace("’", "'").replace("–", "-")]
    preview = cli.ok("preview", gym).out
    assert "1 segment(s), GSM-7" in preview and "note:" not in preview


def test_a_lead_day_the_organization_never_sends_on_is_refused(
    sqlite_db: Engine, cli: Cli, gym: str, tmp_path: Path
) -> None:
    error = cli("template", "set", gym, _file(tmp_path, "Hi"), "--lead", "4").error

    assert error == (
        "error: --lead 4: gym sends on lead days 7,2,0, so a template for day 4 would never be "
        "used; choose one of them (or change the lead days first)"
    )
    assert count(sqlite_db, "templates") == 0
    cli.ok("template", "set", gym, _file(tmp_path, "Hi"), "--lead", "0")


def test_remove_goes_back_down_the_fallback_chain(
    sqlite_db: Engine, cli: Cli, gym: str, tmp_path: Path
) -> None:
    cli.ok("template", "set", gym, _file(tmp_path, "Hi {{ customer.name }}"))
    cli.ok("template", "set", gym, _file(tmp_path, "Soon, {{ customer.name }}"), "--lead", "2")

    removed = cli.ok("template", "remove", gym, "--lead", "2").out
    assert removed == "removed the lead day 2 template of gym; its texts now use: gym default\n"
    assert cli.ok("template", "show", gym, "--lead", "2").out.splitlines()[0] == "# gym default"

    removed = cli.ok("template", "remove", gym).out
    assert removed == "removed the default template of gym; its texts now use: built-in default\n"
    assert count(sqlite_db, "templates") == 0

    again = cli("template", "remove", gym)
    assert again.error == (
        "error: gym has no template of its own for all lead days (its default); "
        "see `reminders template show gym`"
    )
    assert "'ghost'" in cli("template", "remove", "ghost").error

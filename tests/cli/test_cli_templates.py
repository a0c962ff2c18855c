"""``template set/show`` and ``preview``: a refused template changes nothing."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
from cli_support import Cli, count, write_csv
from freezegun import freeze_time
from sqlalchemy import Engine

GOOD = "Hi {{ customer.name }}, {{ days_left }} days left on {{ subscription.plan }}."
UNGUARDED = "Amount due: {{ subscription.amount }} {{ subscription.currency }}."
GUARDED = (
    "Hi {{ customer.name }}.{% if subscription.amount and subscription.currency %} "
    "Amount due: {{ subscription.amount }} {{ subscription.currency }}.{% endif %}"
)


@pytest.fixture
def acme(cli: Cli) -> str:
    cli.ok("org", "add", "acme", "--name", "Acme", "--timezone", "America/New_York")
    return "acme"


def template_file(tmp_path: Path, source: str, name: str = "t.j2") -> Path:
    path = tmp_path / name
    path.write_text(source, encoding="utf-8")
    return path


def test_show_falls_back_to_the_built_in_default(db: Engine, cli: Cli, acme: str) -> None:
    shown = cli.ok("template", "show", acme).out

    assert shown.splitlines()[0] == "# built-in default"
    assert "{{ customer.name }}" in shown


def test_set_stores_and_show_prints_it_with_lookup_order(
    db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    saved = cli.ok("template", "set", acme, template_file(tmp_path, GOOD + "\n"))
    assert "template saved for acme" in saved.out
    assert "[lead 5]" in saved.out and "[lead 1]" in saved.out  # one preview per lead day
    three = "Only {{ days_left }} days, {{ customer.name }}!"
    cli.ok("template", "set", acme, template_file(tmp_path, three, "3.j2"), "--lead", "3")

    assert cli.ok("template", "show", acme).out == f"# acme default\n{GOOD}\n"
    assert cli.ok("template", "show", acme, "--lead", "3").out == f"# acme, lead day 3\n{three}\n"
    assert cli.ok("template", "show", acme, "--lead", "5").out == f"# acme default\n{GOOD}\n"


BROKEN = {
    "syntax error": ("Hi {{ customer.name ", "syntax error"),
    "unclosed block": ("{% if days_left %}soon", "syntax error"),
    "typo in attribute": ("Hi {{ customer.nmae }}", "nmae"),
    "unknown variable": ("Hi {{ foo }}", "unknown variable foo"),
    "sandbox escape": ("{{ ''.__class__.__mro__ }}", "__class__"),
    "sandbox escape via globals": (
        "{{ range.__globals__ }}",
        "__globals__",
    ),
    "format string escape": ("{{ '{0.__class__}'.format(customer) }}", "not allowed"),
    "oversize output": (
        "{% for i in range(100) %}{{ customer.name }} renew now! {% endfor %}",
        "longer than 1600 characters",
    ),
    "string multiplication bomb": ("{{ 'x' * 100000 }}", "not allowed"),
    "too many segments": ("{{ 'Renew now please. ' * 30 }}", "SMS_MAX_SEGMENTS"),
    "empty output": ("{% if false %}x{% endif %}", "empty"),
    "unguarded optional field": (UNGUARDED, "guard it: {% if subscription.amount %}"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_template_is_refused_and_previous_one_kept(
    db: Engine, cli: Cli, acme: str, tmp_path: Path, case: str
) -> None:
    cli.ok("template", "set", acme, template_file(tmp_path, GOOD, "good.j2"))
    source, named = BROKEN[case]

    result = cli("template", "set", acme, template_file(tmp_path, source, "bad.j2"))

    assert named in result.error
    assert result.out == ""
    assert cli.ok("template", "show", acme).out == f"# acme default\n{GOOD}\n"
    assert count(db, "templates") == 1


def test_a_template_printing_an_optional_field_unguarded_is_refused(
    db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    result = cli("template", "set", acme, template_file(tmp_path, UNGUARDED))

    assert result.error == (
        "error: template prints subscription.amount, which is empty for some customers; "
        "guard it: {% if subscription.amount %}…{% endif %}"
    )
    assert result.out == ""
    assert cli.ok("template", "show", acme).out.splitlines()[0] == "# built-in default"
    assert count(db, "templates") == 0


def test_guarding_only_the_amount_is_refused_naming_the_currency(
    sqlite_db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    source = (
        "Hi.{% if subscription.amount %} Due: {{ subscription.amount }} "
        "{{ subscription.currency }}{% endif %}"
    )

    error = cli("template", "set", acme, template_file(tmp_path, source)).error

    assert "template prints subscription.currency" in error
    assert "{% if subscription.currency %}" in error
    assert count(sqlite_db, "templates") == 0


def test_a_guarded_optional_field_is_accepted_and_previewed_with_the_amount(
    db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    saved = cli.ok("template", "set", acme, template_file(tmp_path, GUARDED)).out

    assert "Hi Alex Example. Amount due: 49.90 USD." in saved
    assert cli.ok("template", "show", acme).out == f"# acme default\n{GUARDED}\n"
    assert "  Hi Alex Example. Amount due: 49.90 USD." in cli.ok("preview", acme).out.splitlines()


def test_segment_limit_comes_from_settings(
    sqlite_db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    path = template_file(tmp_path, "{{ customer.name }} " + "x" * 200)
    env = {"SMS_MAX_SEGMENTS": "1"}

    result = cli("template", "set", acme, path, env=env)

    assert "SMS_MAX_SEGMENTS" in result.error
    assert "2 GSM-7 segments" in result.error
    assert count(sqlite_db, "templates") == 0
    cli.ok("template", "set", acme, path)  # the default limit of 3 lets it through


def test_emoji_forces_ucs2_and_the_refusal_names_it(
    sqlite_db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    source = "{{ customer.name }} 🎉 " + "y" * 200

    error = cli("template", "set", acme, template_file(tmp_path, source)).error

    assert "UCS-2" in error and "🎉" in error


def test_bad_lead_and_unknown_org_and_missing_file(
    sqlite_db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    path = template_file(tmp_path, GOOD)
    assert "--lead" in cli("template", "set", acme, path, "--lead", "-1").error
    assert "'ghost'" in cli("template", "set", "ghost", path).error
    assert "missing.j2" in cli("template", "set", acme, tmp_path / "missing.j2").error
    assert count(sqlite_db, "templates") == 0


def test_preview_shows_length_segments_and_encoding(
    db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    cli.ok("template", "set", acme, template_file(tmp_path, GOOD))

    out = cli.ok("preview", acme).out.splitlines()

    body = "Hi Alex Example, 5 days left on Fiber 500."
    assert out == [
        "# acme default",
        f"[lead 5] {len(body)} chars, 1 segment(s), GSM-7",
        f"  {body}",
    ]
    assert "[lead 1]" in cli.ok("preview", acme, "--lead", "1").out


def test_preview_with_emoji_is_ucs2(db: Engine, cli: Cli, acme: str, tmp_path: Path) -> None:
    cli.ok(
        "template",
        "set",
        acme,
        template_file(tmp_path, "{{ customer.name }}, renew 🙂 " + "z" * 60),
    )

    first = cli.ok("preview", acme).out.splitlines()[1]

    assert "2 segment(s), UCS-2" in first
    assert "because of '🙂'" in first


def test_preview_of_the_built_in_default(db: Engine, cli: Cli, acme: str) -> None:
    out = cli.ok("preview", acme, "--lead", "1").out

    assert out.startswith("# built-in default\n[lead 1]")
    assert "expires tomorrow" in out


@freeze_time("2030-06-10 14:00:00")
def test_sent_texts_use_the_lead_day_template_and_record_encoding(
    db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    cli.ok("template", "set", acme, template_file(tmp_path, GOOD))
    cli.ok(
        "template",
        "set",
        acme,
        template_file(tmp_path, "Last call {{ customer.name }} 🔔"),
        "--lead",
        "1",
    )
    rows = [
        ("c1", "Ada", "+1 202 555 0101", "s1", "Fiber 500", "2030-06-15"),
        ("c2", "Bob", "+1 202 555 0102", "s2", "Fiber 500", "2030-06-11"),
    ]
    cli.ok("import", acme, write_csv(tmp_path / "a.csv", rows))

    cli.ok("run")

    by_sub = {m["subscription_id"]: m for m in cli.json("messages")}
    assert by_sub["s1"]["body"] == "Hi Ada, 5 days left on Fiber 500."
    assert (by_sub["s1"]["encoding"], by_sub["s1"]["segments"]) == ("GSM-7", 1)
    assert by_sub["s2"]["body"] == "Last call Ada 🔔".replace("Ada", "Bob")
    assert (by_sub["s2"]["encoding"], by_sub["s2"]["segments"]) == ("UCS-2", 1)


@pytest.mark.parametrize(
    "source",
    [
        "{{ customer.name | center(20000000) }}",
        "{{ '%020000000d' | format(1) }}",
        "{{ customer.name | indent(20000000) }}",
        "{{ customer.name | replace('', 'x' * 1000) | replace('x', 'y' * 1000) }}",
        "{{ '{:>20000000}'.format(1) }}",
    ],
)
def test_a_size_bomb_is_refused_without_building_the_text(
    sqlite_db: Engine, cli: Cli, acme: str, tmp_path: Path, source: str
) -> None:
    path = template_file(tmp_path, source)
    tracemalloc.start()
    try:
        result = cli("template", "set", acme, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert result.error
    assert peak < 5_000_000, f"saving a template allocated {peak / 1e6:.0f} MB"
    assert count(sqlite_db, "templates") == 0


def test_jinja_internal_self_is_refused_as_an_unknown_variable(
    sqlite_db: Engine, cli: Cli, acme: str, tmp_path: Path
) -> None:
    result = cli("template", "set", acme, template_file(tmp_path, "Hi {{ self }}"))

    assert "self" in result.error
    assert count(sqlite_db, "templates") == 0

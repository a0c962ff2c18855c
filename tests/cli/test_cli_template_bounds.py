"""``template set`` refuses a template that could freeze a worker on any branch, within a
second; one stored behind the save's back fails only its organization's texts (issue 15)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cli_support import Cli, count, write_csv
from freezegun import freeze_time
from sqlalchemy import Engine, select

from app.db.models import Organization
from tests.factories import store_template
from tests.hostile_templates import ISSUE_CASES


@pytest.fixture
def gym(cli: Cli) -> str:
    cli.ok(
        "org", "add", "gym", "--name", "Gym", "--timezone", "UTC", "--country", "US",
        "--lead-days", "7,2,0", "--send-window", "00:00-00:00",
    )  # fmt: skip
    return "gym"


@pytest.mark.parametrize("case", list(ISSUE_CASES))
def test_template_set_refuses_each_case_of_the_issue_within_a_second(
    sqlite_db: Engine, cli: Cli, gym: str, tmp_path: Path, case: str
) -> None:
    path = tmp_path / "t.j2"
    path.write_text(ISSUE_CASES[case], encoding="utf-8")

    started = time.monotonic()
    result = cli("template", "set", gym, path)
    elapsed = time.monotonic() - started

    assert elapsed < 1.0
    assert result.error.startswith("error: template not allowed: ")
    assert result.out == ""
    assert count(sqlite_db, "templates") == 0


def test_the_render_budget_is_a_setting_validated_at_start(
    sqlite_db: Engine, cli: Cli, gym: str, tmp_path: Path
) -> None:
    path = tmp_path / "t.j2"
    path.write_text("Hi {{ customer.name }}", encoding="utf-8")

    bad = cli("template", "set", gym, path, env={"TEMPLATE_RENDER_BUDGET_MS": "0"})
    assert bad.error == "error: TEMPLATE_RENDER_BUDGET_MS='0': expected a number above 0, got '0'"
    slow = (
        "{% for i in range(100) %}{% for j in range(100) %}{{ '' }}{% endfor %}{% endfor %}"
        "Hi {{ customer.name }}"
    )
    path.write_text(slow, encoding="utf-8")
    tight = cli("template", "set", gym, path, env={"TEMPLATE_RENDER_BUDGET_MS": "0.01"})
    assert "rendering took longer than 0.01 ms (TEMPLATE_RENDER_BUDGET_MS)" in tight.error
    assert count(sqlite_db, "templates") == 0
    cli.ok("template", "set", gym, path)  # the default 50 ms is plenty


def _store_behind_the_save(engine: Engine, slug: str, body: str) -> None:
    with engine.connect() as conn:
        org_id = conn.execute(select(Organization.id).where(Organization.slug == slug)).scalar()
    assert org_id is not None
    store_template(engine, org_id, body)


@pytest.mark.parametrize("case", ["hidden power tower", "hidden replace chain"])
@freeze_time("2030-06-10 14:00:00")
def test_a_hostile_template_fails_only_its_own_organizations_texts(
    db: Engine, cli: Cli, gym: str, tmp_path: Path, case: str
) -> None:
    cli.ok("org", "add", "acme", "--name", "Acme", "--timezone", "UTC", "--country", "US",
           "--send-window", "00:00-00:00")  # fmt: skip
    _store_behind_the_save(db, gym, ISSUE_CASES[case])
    rows = [
        ("c1", "Ada", "+1 202 555 0101", "s1", "Fiber 500", "2030-06-12"),
        ("c2", "Bob", "+1 202 555 0102", "s2", "Fiber 500", "2030-06-12"),
    ]
    cli.ok("import", gym, write_csv(tmp_path / "g.csv", rows))
    cli.ok("import", "acme", write_csv(tmp_path / "a.csv", rows[:1]))

    started = time.monotonic()
    run = cli("run")
    assert time.monotonic() - started < 10

    assert run.code == 3  # the run finished; some texts failed
    assert "sent 1, failed 2" in run.out

    by_org: dict[str, list[dict[str, object]]] = {}
    for m in cli.json("messages"):
        by_org.setdefault(str(m["org"]), []).append(m)
    assert [m["status"] for m in by_org["acme"]] == ["sent"]
    assert [m["status"] for m in by_org["gym"]] == ["failed", "failed"]
    for m in by_org["gym"]:
        assert m["reason"] == "template_refused"
        assert str(m["error_message"]).startswith("template not allowed: ")
        assert m["body"] is None  # never the built-in wording


def test_preview_of_a_hostile_stored_template_answers_within_a_second(
    sqlite_db: Engine, cli: Cli, gym: str
) -> None:
    _store_behind_the_save(sqlite_db, gym, ISSUE_CASES["power tower"])

    started = time.monotonic()
    error = cli("preview", gym).error

    assert time.monotonic() - started < 1.0
    assert error == "error: template not allowed: results of ** above 2**64 are not allowed"

"""Helpers for driving the ``reminders`` CLI like a user: in-process runs, scripts, CSV files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from app.cli import main
from app.settings import Settings, get_settings

SETTINGS_VARS = tuple(f.metadata["env"] for f in fields(Settings))
HEADER = ("customer_id", "name", "phone", "subscription_id", "plan", "expires_on")
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def error(self) -> str:
        """The single ``error: …`` line of a refused command (asserts there is exactly one)."""
        lines = [line for line in self.err.splitlines() if line.strip()]
        assert self.code != 0, f"expected a failure, got exit 0; stdout={self.out!r}"
        assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
        assert lines[0].startswith("error: "), lines[0]
        return lines[0]


class Cli:
    """``cli("org", "list", "--json")`` runs ``reminders org list --json`` in this process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        self._mp = monkeypatch
        self._capsys = capsys

    def __call__(self, *args: object, env: Mapping[str, str] | None = None) -> Result:
        with self._mp.context() as mp:
            for name, value in (env or {}).items():
                mp.setenv(name, value)
            get_settings.cache_clear()
            self._capsys.readouterr()
            code = main([str(a) for a in args])
            out, err = self._capsys.readouterr()
        get_settings.cache_clear()
        return Result(code, out, err)

    def ok(self, *args: object, env: Mapping[str, str] | None = None) -> Result:
        result = self(*args, env=env)
        assert result.code == 0, f"exit {result.code}: {result.err}"
        return result

    def json(self, *args: object, env: Mapping[str, str] | None = None) -> Any:
        return self.ok(*args, "--json", env=env).json()


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())


def subscriptions(engine: Engine) -> dict[str, tuple[str, str]]:
    """external id -> (expires_on, status)."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT external_id, expires_on, status FROM subscriptions"))
        return {r[0]: (str(r[1]), r[2]) for r in rows}


def write_csv(path: Path, rows: Iterable[Iterable[object]], header: Iterable[str] = HEADER) -> Path:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(list(header))
        writer.writerows([list(r) for r in rows])
    return path


def run_script(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, module: bool = False
) -> subprocess.CompletedProcess[str]:
    """The installed ``reminders`` script (or ``python -m app``) with a clean environment."""
    base = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARS}
    command = [sys.executable, "-m", "app"] if module else [str(BIN / "reminders")]
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

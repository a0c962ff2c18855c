"""Fixtures for driving the ``reminders`` CLI the way a user does.

Most tests call ``app.cli.main`` in-process (fast, and freezegun governs the clock); a few run the
real console script in a subprocess to prove the installed entry point works end to end.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import SETTINGS_VARS, Cli, url_of
from sqlalchemy import Engine

from app.settings import get_settings


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No setting leaks in from the developer's shell; logging is restored afterwards."""
    for name in SETTINGS_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    get_settings.cache_clear()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    get_settings.cache_clear()


@pytest.fixture
def db(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """A clean, migrated database (SQLite and PostgreSQL), and DATABASE_URL pointing at it."""
    monkeypatch.setenv("DATABASE_URL", url_of(engine))
    return engine


@pytest.fixture
def sqlite_db(sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    monkeypatch.setenv("DATABASE_URL", url_of(sqlite_engine))
    return sqlite_engine


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(monkeypatch, capsys)

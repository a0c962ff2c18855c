"""Shared fixtures: a fresh PostgreSQL database and Redis database number per test run.

Tests talk to the real servers. Each run creates its own PostgreSQL database (dropped at the
end) and picks a Redis database number nobody else is using, so parallel runs never meet.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from sqlalchemy import Engine

from app.db.migrate import upgrade
from app.db.session import dispose_engines, get_engine
from tests.factories import clean_tables as _clean

PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")


# Tests that start real worker processes or containers run one after another on one xdist
# worker (their timing checks assume they have the machine's workers to themselves), while
# the rest of the suite runs beside them on the other.
_SERIAL_DIRS = ("tasks", "docker")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent.name in _SERIAL_DIRS:
            item.add_marker(pytest.mark.xdist_group("workers"))


def _pg_url(dbname: str) -> str:
    base = PG_ADMIN.rsplit("/", 1)[0]
    return f"{base}/{dbname}".replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A brand-new PostgreSQL database for this run, migrated, dropped afterwards."""
    name = f"reminders_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN}: {exc}")
    admin.execute(f'CREATE DATABASE "{name}"')
    url = _pg_url(name)
    upgrade(url)
    try:
        yield url
    finally:
        dispose_engines()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database number no other run is using (claimed with SETNX on db 0)."""
    root = redis.Redis.from_url(f"{REDIS_BASE}/0")
    token = f"{os.getpid()}-{uuid.uuid4().hex}"
    for db in range(1, 16):
        if root.set(f"reminders-test-db:{db}", token, nx=True, ex=3600):
            url = f"{REDIS_BASE}/{db}"
            redis.Redis.from_url(url).flushdb()
            try:
                yield url
            finally:
                redis.Redis.from_url(url).flushdb()
                root.delete(f"reminders-test-db:{db}")
            return
    pytest.fail("no free Redis database number (1-15) for this test run")


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = get_engine(pg_url)
    _clean(engine)
    yield engine
    _clean(engine)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'reminders.db'}"
    upgrade(url)
    return url


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Engine:
    return get_engine(sqlite_url)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each test using this runs twice: on the embedded default and on PostgreSQL."""
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


# Property-based tests: a bounded profile for every run (CI included), a long one for deep runs
# (`scripts/test.sh tests/services/test_day_rules_model.py --hypothesis-profile=long`).
hypothesis_settings.register_profile(
    "ci",
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    derandomize=False,
    suppress_health_check=list(HealthCheck),
)
hypothesis_settings.register_profile(
    "long",
    max_examples=2000,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
hypothesis_settings.load_profile("ci")

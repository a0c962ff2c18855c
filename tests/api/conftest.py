"""One real `reminders serve` process for the API tests, on this run's PostgreSQL and Redis.

Each test starts from empty tables (``pg_engine``) and makes the keys it needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from app.services.api_keys import create_key, revoke_key
from tests import factories
from tests.api.support import Api
from tests.serving import Server, serve


def api_env(pg_url: str, redis_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": pg_url,
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "LOG_LEVEL": "INFO",
    }


@pytest.fixture(scope="session")
def server(
    pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    with serve(api_env(pg_url, redis_url), tmp_path_factory.mktemp("api")) as running:
        yield running


@pytest.fixture
def db(pg_engine: Engine) -> Engine:
    return pg_engine


def key_for(engine: Engine, slug: str | None, *, revoked: bool = False) -> str:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        key_id, key = create_key(conn, slug=slug, admin=slug is None, name="test", now=now)
        if revoked:
            revoke_key(conn, key_id, now=now)
    return key


@pytest.fixture
def acme(db: Engine) -> str:
    factories.make_org(db, "acme", tz="UTC", now=datetime.now(UTC), send_window="00:00-00:00")
    return "acme"


@pytest.fixture
def admin(server: Server, db: Engine) -> Api:
    return Api(server.base, key_for(db, None))


@pytest.fixture
def api(server: Server, db: Engine, acme: str) -> Api:
    """The acme organization's key."""
    return Api(server.base, key_for(db, acme))

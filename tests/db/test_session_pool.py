"""The pool's liveness check: a connection idle a while is pinged before use and replaced if
the server dropped it; one used a moment ago is not pinged (a round trip saved per unit of
work), and if it did die meanwhile, its next statement fails once and the pool recovers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, exc

from app.db import session
from tests.conftest import PG_ADMIN


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    e = session.make_engine(pg_url)
    yield e
    e.dispose()


def _backend(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def _terminate(pid: int) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    time.sleep(0.1)  # the backend is gone before the next use


def test_an_idle_connection_the_server_dropped_is_replaced_before_use(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    dropped = _backend(engine)
    _terminate(dropped)
    monkeypatch.setattr(session, "ALIVE_SECONDS", 0.05)  # idle "a while" in this test
    time.sleep(0.1)
    assert _backend(engine) != dropped  # no error: the ping found it dead


def test_a_connection_used_a_moment_ago_is_not_pinged_and_a_dead_one_fails_only_once(
    engine: Engine,
) -> None:
    pings: list[object] = []
    dialect = engine.dialect
    real = dialect.do_ping

    def counted(dbapi_conn: Any) -> bool:
        pings.append(dbapi_conn)
        return bool(real(dbapi_conn))

    dialect.do_ping = counted  # type: ignore[method-assign,assignment]
    first = _backend(engine)
    for _ in range(20):
        assert _backend(engine) == first
    assert pings == []

    _terminate(first)
    with pytest.raises(exc.OperationalError) as failed:
        _backend(engine)
    assert failed.value.connection_invalidated
    assert _backend(engine) not in (first, None)  # the pool recovered by itself

"""Engines and sessions. One engine per process; disposed after fork so no socket is shared."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from app.settings import get_settings

_engines: dict[str, tuple[int, Engine]] = {}


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets the CLI read while a worker writes; busy_timeout waits instead of failing.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    engine = create_engine(url, pool_size=10, max_overflow=20)
    _ping_when_idle(engine)
    return engine


#: A pooled connection given back this recently is taken as alive without a ping.
ALIVE_SECONDS = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """SQLAlchemy's ``pool_pre_ping``, for connections idle ALIVE_SECONDS or more only.

    The pre-ping is a round trip to PostgreSQL on every checkout: a busy worker checks a
    connection out for every group of claims and of outcomes, a few hundred times a second,
    and paid 1.5% of its CPU for pings of connections it had used a moment before. A
    connection that died meanwhile (a restarted server) still fails only its next statement:
    SQLAlchemy then sees the disconnect and replaces every connection of the pool.
    """

    @event.listens_for(engine, "checkin")
    def _given_back(_dbapi_conn: Any, record: Any) -> None:
        record.info["given_back"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        given_back = record.info.get("given_back")
        if given_back is None or time.monotonic() - given_back < ALIVE_SECONDS:
            return  # just opened, or in use a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as exc:
            # The pool drops this connection and checks out another (three tries).
            raise DisconnectionError(f"stale pooled connection: {exc}") from exc
        if not alive:
            raise DisconnectionError("stale pooled connection")


def get_engine(url: str | None = None) -> Engine:
    """This process's engine for ``url`` (default: DATABASE_URL), rebuilt in a forked child."""
    key = url or get_settings().database_url
    pid = os.getpid()
    cached = _engines.get(key)
    if cached is None or cached[0] != pid:
        if cached is not None:
            # Inherited from the parent: drop its pool without closing the parent's sockets.
            cached[1].dispose(close=False)
        _engines[key] = (pid, make_engine(key))
    return _engines[key][1]


def dispose_engines(*, close: bool = True) -> None:
    """Drop every pool: at shutdown (close=True), or in a child right after fork (close=False,
    so the parent's sockets are left alone)."""
    for _pid, engine in _engines.values():
        engine.dispose(close=close)
    _engines.clear()


def session_factory(engine: Engine | None = None) -> sessionmaker[Session]:
    return sessionmaker(bind=engine or get_engine(), expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A unit of work: commit on success, roll back on any error."""
    session = session_factory(engine)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()

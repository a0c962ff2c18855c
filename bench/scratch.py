"""A throwaway PostgreSQL database for a benchmark: made, migrated, dropped however it ends."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from app.db.migrate import upgrade
from app.db.session import dispose_engines

ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def database(prefix: str) -> Iterator[str]:
    """A new database named ``prefix`` and a random suffix, at the migrations' head; its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = ADMIN.rsplit("/", 1)[0] + f"/{name}"
            upgrade(url)
            yield url
        finally:
            dispose_engines()
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

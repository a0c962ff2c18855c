"""Fixtures for the worker tests: this process's Celery client pointed at the run's servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from app.config import celery_config
from app.settings import get_settings
from tests.tasks.support import worker_env


@pytest.fixture(scope="session")
def celery_app(pg_url: str, redis_url: str) -> Iterator[Celery]:
    """The app module as the CLI would load it, with this run's database and broker."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("CELERY_BROKER_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_DB"):
            mp.delenv(name, raising=False)
        mp.setenv("DATABASE_URL", pg_url)
        mp.setenv("REDIS_URL", redis_url)
        get_settings.cache_clear()
        from app.tasks import runtime, scheduler

        scheduler.app.conf.update(celery_config.build(get_settings()))
        runtime._runtime = None
        yield scheduler.app
        scheduler.app.close()
    get_settings.cache_clear()
    runtime._runtime = None


@pytest.fixture
def broker(redis_url: str) -> str:
    """The run's Redis database, emptied: no message of an earlier test is left in a queue."""
    redis.Redis.from_url(redis_url).flushdb()
    return redis_url


@pytest.fixture
def env(pg_url: str, broker: str, tmp_path: Path) -> dict[str, str]:
    return worker_env(pg_url=pg_url, broker=broker, redis_url=broker, tmp=tmp_path)

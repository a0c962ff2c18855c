"""What one worker process holds, created after fork, and the worker's lifecycle signals.

Each pool process builds its own engine, provider and Sender (thread pool, HTTP sessions) the
first time it needs them, after the fork: nothing with a socket is shared between processes.
The main process touches ``WORKER_HEARTBEAT_FILE`` on every worker heartbeat (about every 2 s) so
a container health check costs a stat(), not a broker round-trip.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from celery import signals
from click.core import ParameterSource
from sqlalchemy import Engine

from app import gcpolicy
from app.db.session import dispose_engines, get_engine
from app.logs import configure_logging
from app.metrics import worker as worker_metrics
from app.providers import SmsProvider, build_provider, check_provider_settings
from app.services.circuit_share import RedisCircuitShare
from app.services.ratelimit_redis import RedisRateLimiter
from app.services.sender import Sender
from app.settings import Settings, get_settings

log = logging.getLogger("app.worker")

#: ``module:callable`` taking the settings and returning a provider, from the worker option
#: ``--sms-provider-factory`` (tests and benchmarks plug in their own providers this way).
_provider_factory: str | None = None


def set_provider_factory(spec: str | None) -> None:
    global _provider_factory
    _provider_factory = spec or None


def _make_provider(settings: Settings) -> SmsProvider:
    if _provider_factory is None:
        check_provider_settings(settings)
        return build_provider(settings)
    module, _, name = _provider_factory.partition(":")
    factory: Any = getattr(importlib.import_module(module), name)
    provider: SmsProvider = factory(settings)
    return provider


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    pid: int
    _provider: SmsProvider | None = field(default=None, repr=False)
    _sender: Sender | None = field(default=None, repr=False)
    _settled: bool = field(default=False, repr=False)

    @property
    def provider(self) -> SmsProvider:
        if self._provider is None:
            self._provider = _make_provider(self.settings)
        return self._provider

    @property
    def sender(self) -> Sender:
        if self._sender is None:
            self._sender = Sender(
                engine=self.engine,
                provider=self.provider,
                settings=self.settings,
                limiter=RedisRateLimiter.from_url(self.settings.redis_connection_url),
                circuit_share=RedisCircuitShare(self.settings.redis_connection_url),
            )
        return self._sender

    def batch_done(self) -> None:
        """After this process's first batch its long-lived caches exist: freeze them too."""
        if not self._settled:
            self._settled = True
            gcpolicy.settle()

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None


_runtime: Runtime | None = None


def current() -> Runtime:
    """This process's runtime, built on first use (after fork in a pool process)."""
    global _runtime
    pid = os.getpid()
    if _runtime is None or _runtime.pid != pid:
        settings = get_settings()
        _runtime = Runtime(settings=settings, engine=get_engine(settings.database_url), pid=pid)
    return _runtime


def touch(path: str | None) -> None:
    """Bump a health-check file's modification time; a failure is logged, never raised."""
    if not path:
        return
    try:
        Path(path).touch()
    except OSError as exc:
        log.warning("cannot touch heartbeat file %s: %s", path, exc)


# --- signals ----------------------------------------------------------------------------------


def _setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    # Connecting this signal stops Celery from configuring logging: ours (LOG_FORMAT) applies,
    # at the level of Celery's own -l/--loglevel when the command line gives one.
    configure_logging(get_settings(), level=loglevel if _loglevel_given() else None)


def _loglevel_given() -> bool:
    """Whether ``celery worker|beat`` was given ``-l/--loglevel`` (its default, WARNING, must
    not hide LOG_LEVEL). Pool processes inherit the command's click context from the fork."""
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if "loglevel" in ctx.params:
            return ctx.get_parameter_source("loglevel") not in (None, ParameterSource.DEFAULT)
        ctx = ctx.parent
    return False


def _worker_init(**_: Any) -> None:
    # Refuse to start on missing provider settings, before any task is taken.
    if _provider_factory is None:
        check_provider_settings(get_settings())


def _process_init(**_: Any) -> None:
    global _runtime
    # Pools inherited from the parent must not be used here: their sockets are the parent's.
    dispose_engines()
    _runtime = None
    gcpolicy.tune()


def _process_shutdown(**_: Any) -> None:
    if _runtime is not None and _runtime.pid == os.getpid():
        _runtime.close()
    dispose_engines()
    worker_metrics.process_exited(os.getpid())


def _ready(sender: Any = None, **_: Any) -> None:
    touch(get_settings().worker_heartbeat_file)
    log.info("worker ready: %s", getattr(sender, "hostname", "?"))


def _heartbeat(**_: Any) -> None:
    touch(get_settings().worker_heartbeat_file)


def _shutting_down(sig: str | None = None, how: str | None = None, **_: Any) -> None:
    log.info("worker shutting down (%s, %s shutdown): texts in flight finish first", sig, how)


def _shutdown(**_: Any) -> None:
    log.info("worker stopped")


signals.setup_logging.connect(_setup_logging)
signals.worker_init.connect(_worker_init)
signals.worker_process_init.connect(_process_init)
signals.worker_process_shutdown.connect(_process_shutdown)
signals.worker_ready.connect(_ready)
signals.heartbeat_sent.connect(_heartbeat)
signals.worker_shutting_down.connect(_shutting_down)
signals.worker_shutdown.connect(_shutdown)

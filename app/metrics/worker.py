"""A worker's own counters and histograms, served on WORKER_METRICS_PORT by its main process.

The send path runs in Celery's prefork pool processes, so the counters live in
prometheus-client's multiprocess mode: each pool process writes its values to files of its own
in PROMETHEUS_MULTIPROC_DIR, and the main process's HTTP server adds them up at each scrape
(``MultiProcessCollector``). The library picks its mode when it makes its first value, so
``start`` runs in the main process before the pool forks and before any instrument exists;
with no WORKER_METRICS_PORT nothing is made and every ``count``/``observe`` here is a no-op.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

ENV = "PROMETHEUS_MULTIPROC_DIR"

PROVIDER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0)
RATE_WAIT_BUCKETS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0)
BATCH_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass(frozen=True)
class _Instruments:
    texts: Counter
    provider: Histogram
    rate_wait: Histogram
    batch: Histogram


_on: _Instruments | None = None


def _make() -> _Instruments:
    from prometheus_client import Counter, Histogram

    return _Instruments(
        texts=Counter(
            "reminders_texts",
            "Texts by what their attempt came to (the batch log's words) and provider error code.",
            ["outcome", "error_code"],
        ),
        provider=Histogram(
            "reminders_provider_request_seconds",
            "One send request to the SMS provider, by how it answered.",
            ["provider", "result"],
            buckets=PROVIDER_BUCKETS,
        ),
        rate_wait=Histogram(
            "reminders_rate_limit_wait_seconds",
            "How long a sender's texts waited for their first rate-limit slot, per booking.",
            buckets=RATE_WAIT_BUCKETS,
        ),
        batch=Histogram(
            "reminders_batch_seconds",
            "A send batch, from its task's start to its last outcome written.",
            buckets=BATCH_BUCKETS,
        ),
    )


def start(*, port: int, directory: str | None) -> str:
    """Empty (or make) the multiprocess directory, turn the instruments on and serve them on
    ``port``; the directory used. Call once, in the worker's main process, before it forks."""
    global _on
    path = _fresh_dir(directory)
    os.environ[ENV] = path  # the pool processes inherit it; the library reads it there
    from prometheus_client import CollectorRegistry, start_http_server, values
    from prometheus_client.multiprocess import MultiProcessCollector

    if not getattr(values.ValueClass, "_multiprocess", False):
        # Imported before the variable was set (no value was made yet): multiprocess now.
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    _on = _make()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"WORKER_METRICS_PORT={port}: cannot listen ({exc.strerror or exc}); "
            "choose a free port or leave it unset"
        ) from None
    return path


def _fresh_dir(directory: str | None) -> str:
    if directory is None:
        made = tempfile.mkdtemp(prefix="reminders-worker-metrics-")
        atexit.register(shutil.rmtree, made, ignore_errors=True)
        return made
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        for old in path.glob("*.db"):  # a previous run's values must not add to this one's
            old.unlink()
    except OSError as exc:
        raise ConfigError(f"{ENV}={directory!r}: cannot use it ({exc.strerror or exc})") from None
    return str(path)


def process_exited(pid: int) -> None:
    """A pool process ends: its live gauges (none yet) stop counting; its counters stay."""
    if _on is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def count_text(outcome: str, *, code: str | None = None, n: int = 1) -> None:
    if _on is not None and n:
        _on.texts.labels(outcome, code or "").inc(n)


def observe_request(provider: str, result: str, seconds: float) -> None:
    if _on is not None:
        _on.provider.labels(provider, result).observe(seconds)


def observe_rate_wait(seconds: float) -> None:
    if _on is not None:
        _on.rate_wait.observe(max(0.0, seconds))


def observe_batch(seconds: float) -> None:
    if _on is not None:
        _on.batch.observe(max(0.0, seconds))

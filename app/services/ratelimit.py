"""Per-sender rate limits. The engine asks before every send; the limit is shared by key.

``LocalRateLimiter`` holds the limit within one process (the CLI). The Celery workers use a
Redis-backed limiter so the limit holds across every worker process and host.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class RateLimiter(Protocol):
    def acquire(self, key: str, rate: float) -> None:
        """Block until one more message may go out for ``key`` at ``rate`` per second."""
        ...


class LocalRateLimiter:
    """A spacing limiter: messages for one key leave at least 1/rate seconds apart."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}

    def acquire(self, key: str, rate: float) -> None:
        interval = 1.0 / rate
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next.get(key, now))
            self._next[key] = slot + interval
        wait = slot - now
        if wait > 0:
            time.sleep(wait)


class NoRateLimit:
    def acquire(self, key: str, rate: float) -> None:
        return None

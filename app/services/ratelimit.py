"""Per-sender rate limits, in message segments per second (a 3-segment text takes 3 slots).

``reserve(key, rate, count, max_wait, not_before=0)`` books up to ``count`` consecutive slots
spaced 1/rate apart, none sooner than ``not_before`` seconds ahead (a caller's time to get its
texts ready: an idle sender's slots start then, not at once) and none further than
``max_wait``, and returns ``(first_wait, granted, spacing)``: slot ``i`` comes
``first_wait + i * spacing`` seconds after the call returns.
Rows that got no slot go back to the ledger for later instead of holding a worker asleep.
``LocalRateLimiter`` holds the limit within one process (the CLI); the Celery workers use the
Redis-backed limiter, so the limit holds across every worker process and host.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from app.aioloop import monotonic

log = logging.getLogger("app.ratelimit")


class RateLimiter(Protocol):
    """Every method the sender calls."""

    def reserve(
        self, key: str, rate: float, count: int, max_wait: float, not_before: float = 0.0
    ) -> tuple[float, int, float]:
        """Book up to ``count`` slots for ``key``: (seconds to the first, granted, spacing)."""
        ...

    async def reserve_async(
        self, key: str, rate: float, count: int, max_wait: float, not_before: float = 0.0
    ) -> tuple[float, int, float]:
        """``reserve`` on the running event loop."""
        ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...


class _NoIO:
    """A limiter held in this process: nothing to await, nothing to close."""

    def reserve(
        self, key: str, rate: float, count: int, max_wait: float, not_before: float = 0.0
    ) -> tuple[float, int, float]:
        raise NotImplementedError

    async def reserve_async(
        self, key: str, rate: float, count: int, max_wait: float, not_before: float = 0.0
    ) -> tuple[float, int, float]:
        return self.reserve(key, rate, count, max_wait, not_before)

    def close(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def grantable(wait: float, rate: float, count: int, max_wait: float) -> int:
    """How many slots fit between ``wait`` and ``max_wait`` seconds ahead."""
    if wait > max_wait:
        return 0
    return min(count, int((max_wait - wait) * rate) + 1)


class LocalRateLimiter(_NoIO):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}

    def reserve(
        self, key: str, rate: float, count: int, max_wait: float, not_before: float = 0.0
    ) -> tuple[float, int, float]:
        with self._lock:
            now = monotonic()  # real time, even in frozen tests
            slot = max(now + not_before, self._next.get(key, now))
            granted = grantable(slot - now, rate, count, max_wait)
            self._next[key] = slot + granted / rate
        return slot - now, granted, 1.0 / rate


class NoRateLimit(_NoIO):
    def reserve(
        self, key: str, rate: float, count: int, max_wait: float, not_before: float = 0.0
    ) -> tuple[float, int, float]:
        return 0.0, count, 0.0


class FallbackRateLimiter:
    """The shared limiter while it answers; this process's own if it does not (logged once)."""

    def __init__(self, primary: RateLimiter, fallback: RateLimiter) -> None:
        self._primary = primary
        self._fallback = fallback
        self._failed = False

    def reserve(
        self, key: str, rate: float, count: int, max_wait: float, not_before: float = 0.0
    ) -> tuple[float, int, float]:
        if not self._failed:
            try:
                return self._primary.reserve(key, rate, count, max_wait, not_before)
            except Exception as exc:  # noqa: BLE001 - any failure of the shared store
                self._failed = True
                log.warning(
                    "shared rate limit unavailable (%s): limiting within this process only",
                    type(exc).__name__,
                )
        return self._fallback.reserve(key, rate, count, max_wait, not_before)

    async def reserve_async(
        self, key: str, rate: float, count: int, max_wait: float, not_before: float = 0.0
    ) -> tuple[float, int, float]:
        if not self._failed:
            try:
                return await self._primary.reserve_async(key, rate, count, max_wait, not_before)
            except Exception as exc:  # noqa: BLE001 - any failure of the shared store
                self._failed = True
                log.warning(
                    "shared rate limit unavailable (%s): limiting within this process only",
                    type(exc).__name__,
                )
        return await self._fallback.reserve_async(key, rate, count, max_wait, not_before)

    def close(self) -> None:
        self._primary.close()
        self._fallback.close()

    async def aclose(self) -> None:
        await self._primary.aclose()
        await self._fallback.aclose()

"""The per-sender rate limit held in Redis, so it binds every worker process on every host.

Each caller reserves the next free send slot for its key with one Lua script (atomic in Redis)
and then sleeps until that slot. Slots are spaced 1/rate apart on Redis's own clock, so hosts
with drifting clocks still agree, and a burst from many processes is spread out instead of
pushing the provider past what the sender may send.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis
import redis.asyncio

from app.aioloop import monotonic

# KEYS[1]: the key's next free slot (microseconds on Redis's clock).
# ARGV: spacing between slots, slots wanted, furthest first slot, soonest first slot
# (microseconds, count, µs, µs).
# Returns {wait until the first slot, slots granted, Redis's clock}; slots past max_wait are
# not booked.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local spacing = tonumber(ARGV[1])
local wanted = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local earliest = now + tonumber(ARGV[4] or '0')
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < earliest then slot = earliest end
local wait = slot - now
if wait > max_wait then return {wait, 0, now} end
local granted = math.min(wanted, math.floor((max_wait - wait) / spacing) + 1)
local next_free = slot + granted * spacing
local ttl_ms = math.floor((next_free - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%d', next_free), 'PX', ttl_ms)
return {wait, granted, now}
"""


class RedisClock:
    """Redis's clock on this process's monotonic clock, NTP-style: from the round trip with the
    least doubt (half its length), which ages at a worst-case drift rate so a fresher tight
    one replaces it."""

    DRIFT = 1e-4  # 100 ppm

    def __init__(self) -> None:
        self._offset = 0.0
        self._doubt = float("inf")
        self._at = 0.0

    def sample(self, redis_now: float, asked: float, answered: float) -> None:
        doubt = (answered - asked) / 2
        if doubt <= self._doubt + (answered - self._at) * self.DRIFT:
            self._offset = redis_now - (asked + answered) / 2
            self._doubt, self._at = doubt, answered

    def to_local(self, redis_time: float) -> float:
        return redis_time - self._offset


class RedisRateLimiter:
    """Slots for ``key`` spaced 1/rate apart across every process that shares the Redis."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        url: str,
        prefix: str = "reminders:rate:",
        max_connections: int = 32,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._reserve: Any = client.register_script(_RESERVE)
        self._url = url
        self._max_connections = max_connections
        # The engine's event loop books through its own client, made on that loop.
        self._async: tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis, Any] | None = None
        self._clock = RedisClock()

    @classmethod
    def from_url(cls, url: str, *, max_connections: int = 32) -> RedisRateLimiter:
        # Many callers share a few connections: one waits for a free connection instead of
        # failing with "too many connections".
        pool = redis.BlockingConnectionPool.from_url(url, **_pool_options(max_connections))
        return cls(redis.Redis(connection_pool=pool), url=url, max_connections=max_connections)

    def reserve(
        self, key: str, rate: float, count: int, max_wait: float, not_before: float = 0.0
    ) -> tuple[float, int, float]:
        """One round trip books a whole batch's slots (see app.services.ratelimit)."""
        args, spacing = _script_args(rate, count, max_wait, not_before)
        wait_us, granted, _ = self._reserve(keys=[self._prefix + key], args=args)
        return int(wait_us) / 1_000_000, int(granted), spacing

    async def reserve_async(
        self, key: str, rate: float, count: int, max_wait: float, not_before: float = 0.0
    ) -> tuple[float, int, float]:
        """``reserve`` on the running event loop, with no thread hand-off.

        The wait counts from when this returns, read off Redis's clock: on a busy loop the
        answer may be read tens of milliseconds after Redis booked the slot, and a wait taken
        as "from now" would then put every slot that much late. It may be negative: the slot
        has already passed.
        """
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self._url, **_pool_options(self._max_connections)
            )
            client = redis.asyncio.Redis(connection_pool=pool)
            self._async = (loop, client, client.register_script(_RESERVE))
        args, spacing = _script_args(rate, count, max_wait, not_before)
        asked = monotonic()
        wait_us, granted, now_us = await self._async[2](keys=[self._prefix + key], args=args)
        answered = monotonic()
        redis_now = int(now_us) / 1_000_000
        self._clock.sample(redis_now, asked, answered)
        slot = self._clock.to_local(redis_now + int(wait_us) / 1_000_000)
        return slot - monotonic(), int(granted), spacing

    def close(self) -> None:
        """Close the synchronous client's connections."""
        self._client.close()
        self._client.connection_pool.disconnect()

    async def aclose(self) -> None:
        """Close the event loop's client (on that loop)."""
        if self._async is not None:
            client, self._async = self._async[1], None
            await client.aclose(close_connection_pool=True)

    def acquire(self, key: str, rate: float) -> None:
        """Block until one more message fits (for callers outside the engine)."""
        wait, granted, _ = self.reserve(key, rate, 1, max_wait=3600.0)
        if granted and wait > 0:
            time.sleep(wait)


def _script_args(
    rate: float, count: int, max_wait: float, not_before: float
) -> tuple[list[int], float]:
    """The reserve script's ARGV (microseconds) and the slot spacing in seconds."""
    spacing_us = max(1, round(1_000_000 / rate))
    args = [spacing_us, count, round(max_wait * 1_000_000), round(max(0.0, not_before) * 1e6)]
    return args, spacing_us / 1_000_000


def _pool_options(max_connections: int) -> dict[str, Any]:
    return {
        "max_connections": max_connections,
        "timeout": 10,
        "socket_timeout": 5,
        "socket_connect_timeout": 5,
    }

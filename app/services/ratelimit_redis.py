"""The per-sender rate limit held in Redis, so it binds every worker process on every host.

Each caller reserves the next free send slots for its key with a Lua script (atomic in Redis;
the callers on one event loop that ask while a call is on its way go together in the next one)
and then sleeps until those slots. Slots are spaced 1/rate apart on Redis's own clock, so hosts
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

# Books slots for each of KEYS in turn (one round trip for every caller gathered on a loop).
# KEYS[i]: the key's next free slot (microseconds on Redis's clock).
# ARGV[4i-3..4i]: spacing between slots, slots wanted, furthest first slot, soonest first slot
# (microseconds, count, µs, µs).
# Returns {wait until the first slot, slots granted} for each key, then Redis's clock; slots
# past max_wait are not booked.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i, key in ipairs(KEYS) do
  local b = (i - 1) * 4
  local spacing = tonumber(ARGV[b + 1])
  local wanted = tonumber(ARGV[b + 2])
  local max_wait = tonumber(ARGV[b + 3])
  local earliest = now + tonumber(ARGV[b + 4])
  local slot = tonumber(redis.call('GET', key) or '0')
  if slot < earliest then slot = earliest end
  local wait = slot - now
  local granted = 0
  if wait <= max_wait then
    granted = math.min(wanted, math.floor((max_wait - wait) / spacing) + 1)
    local next_free = slot + granted * spacing
    local ttl_ms = math.floor((next_free - now) / 1000) + 1000
    redis.call('SET', key, string.format('%d', next_free), 'PX', ttl_ms)
  end
  out[#out + 1] = wait
  out[#out + 1] = granted
end
out[#out + 1] = now
return out
"""

#: Callers' bookings sent in one script call at most (a process has a lane per sender).
MAX_PER_BOOKING = 200


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
        self._async: _Bookings | None = None
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

        The bookings asked for on the loop while one is on its way to Redis go together in
        the next script call: one round trip for many senders' lanes, not one each.

        The wait counts from when this returns, read off Redis's clock: on a busy loop the
        answer may be read tens of milliseconds after Redis booked the slot, and a wait taken
        as "from now" would then put every slot that much late. It may be negative: the slot
        has already passed.
        """
        loop = asyncio.get_running_loop()
        if self._async is None or self._async.loop is not loop:
            self._async = _Bookings(loop, self._url, self._max_connections, self._clock)
        args, spacing = _script_args(rate, count, max_wait, not_before)
        slot, granted = await self._async.book(self._prefix + key, args)
        return slot - monotonic(), granted, spacing

    def close(self) -> None:
        """Close the synchronous client's connections."""
        self._client.close()
        self._client.connection_pool.disconnect()

    async def aclose(self) -> None:
        """Close the event loop's client (on that loop)."""
        if self._async is not None:
            bookings, self._async = self._async, None
            await bookings.client.aclose(close_connection_pool=True)

    def acquire(self, key: str, rate: float) -> None:
        """Block until one more message fits (for callers outside the engine)."""
        wait, granted, _ = self.reserve(key, rate, 1, max_wait=3600.0)
        if granted and wait > 0:
            time.sleep(wait)


class _Bookings:
    """The bookings of one event loop's callers: gathered while one script call is on its way,
    then sent together in the next."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, url: str, max_connections: int, clock: RedisClock
    ) -> None:
        self.loop = loop
        pool = redis.asyncio.BlockingConnectionPool.from_url(url, **_pool_options(max_connections))
        self.client = redis.asyncio.Redis(connection_pool=pool)
        self._script: Any = self.client.register_script(_RESERVE)
        self._clock = clock
        self._waiting: list[tuple[str, list[int], asyncio.Future[tuple[float, int]]]] = []
        self._sending: asyncio.Task[None] | None = None

    async def book(self, key: str, args: list[int]) -> tuple[float, int]:
        """(the first slot on this process's monotonic clock, slots granted)."""
        future: asyncio.Future[tuple[float, int]] = self.loop.create_future()
        self._waiting.append((key, args, future))
        if self._sending is None:
            # Started on the loop's next turn: what this turn's callers ask for goes with it.
            self._sending = self.loop.create_task(self._send())
        return await future

    async def _send(self) -> None:
        group: list[tuple[str, list[int], asyncio.Future[tuple[float, int]]]] = []
        try:
            while self._waiting:
                group = self._waiting[:MAX_PER_BOOKING]
                del self._waiting[:MAX_PER_BOOKING]
                args = [a for _, call, _ in group for a in call]
                asked = monotonic()
                try:
                    answer = await self._script(keys=[k for k, _, _ in group], args=args)
                except Exception as exc:  # noqa: BLE001 - each caller hears it
                    for _, _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                answered = monotonic()
                redis_now = int(answer[-1]) / 1_000_000
                self._clock.sample(redis_now, asked, answered)
                for i, (_, _, future) in enumerate(group):
                    if not future.done():  # a caller cancelled meanwhile: its slots pass
                        wait_us, granted = answer[2 * i], answer[2 * i + 1]
                        slot = self._clock.to_local(redis_now + int(wait_us) / 1_000_000)
                        future.set_result((slot, int(granted)))
        except BaseException:  # the loop is closing: no caller waits for ever
            for _, _, future in group + self._waiting:
                future.cancel()
            self._waiting.clear()
            raise
        finally:
            self._sending = None


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

"""The per-sender rate limit held in Redis, so it binds every worker process on every host.

Each caller reserves the next free send slot for its key with one Lua script (atomic in Redis)
and then sleeps until that slot. Slots are spaced 1/rate apart on Redis's own clock, so hosts
with drifting clocks still agree, and a burst from many processes is spread out instead of
pushing the provider past what the sender may send.
"""

from __future__ import annotations

import time
from typing import Any

import redis

# KEYS[1]: the key's next free slot (microseconds on Redis's clock).
# ARGV[1]: spacing between slots (microseconds). Returns how long the caller must wait.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local spacing = tonumber(ARGV[1])
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < now then slot = now end
local ttl = math.floor((slot - now + spacing) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%d', slot + spacing), 'PX', ttl)
return slot - now
"""


class RedisRateLimiter:
    """``acquire(key, rate)`` blocks until one more message for ``key`` fits ``rate`` per second."""

    def __init__(self, client: redis.Redis, *, prefix: str = "reminders:rate:") -> None:
        self._client = client
        self._prefix = prefix
        self._reserve: Any = client.register_script(_RESERVE)

    @classmethod
    def from_url(cls, url: str) -> RedisRateLimiter:
        return cls(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5))

    def acquire(self, key: str, rate: float) -> None:
        spacing_us = max(1, round(1_000_000 / rate))
        wait_us = int(self._reserve(keys=[self._prefix + key], args=[spacing_us]))
        if wait_us > 0:
            time.sleep(wait_us / 1_000_000)

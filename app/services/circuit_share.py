"""One provider account's circuit, shared by every process that sends through it.

Each process keeps its own breaker (``app.domain.circuit``) and opens it on its own failures:
an outage reaches every process within a few requests. What they share, through Redis: the
probe (while the circuit is open, one request at a time probes the provider, whichever process
holds the account's probe) and the close (when any process's request gets through, the
account's close count moves, and every process that opened before it closes at its next look
instead of waiting for a probe of its own). If Redis does not answer, a process goes on alone,
as with one process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from typing import Protocol

import redis
import redis.asyncio

log = logging.getLogger("app.engine")

TIMEOUT_SECONDS = 1.0  # a look at the shared circuit never holds the event loop's texts longer


class CircuitShare(Protocol):
    """Each method answers as a process alone would when the share cannot be reached."""

    async def take_probe(self, account: str, hold: float) -> bool:
        """This process probes ``account`` for the next ``hold`` seconds, unless another does."""
        ...

    async def closes(self, account: str) -> int | None:
        """How many times any process has closed ``account``'s circuit (only ever grows);
        None: not known."""
        ...

    async def closed(self, account: str) -> None:
        """This process's request got through: ``account``'s circuit is closed for all."""
        ...

    async def aclose(self) -> None: ...


class LocalCircuitShare:
    """One process alone: it always holds the probe, and no one else closes its circuit."""

    async def take_probe(self, account: str, hold: float) -> bool:
        return True

    async def closes(self, account: str) -> int | None:
        return None

    async def closed(self, account: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


class RedisCircuitShare(LocalCircuitShare):
    """The probe is a key set only if absent, expiring after ``hold``; the closes a counter.
    Redis not answering: the answers of a process alone (LocalCircuitShare's)."""

    def __init__(self, url: str, *, prefix: str = "reminders:circuit:") -> None:
        self._url = url
        self._prefix = prefix
        self._token = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._client: tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis] | None = None

    def _redis(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client[0] is not loop:
            client = redis.asyncio.Redis.from_url(
                self._url,
                socket_timeout=TIMEOUT_SECONDS,
                socket_connect_timeout=TIMEOUT_SECONDS,
            )
            self._client = (loop, client)
        return self._client[1]

    async def take_probe(self, account: str, hold: float) -> bool:
        """Free, or already this process's (its last probe's text did not go: it may try
        again at once, as a process alone would)."""
        key = f"{self._prefix}{account}:probe"
        millis = max(1, int(hold * 1000))
        try:
            client = self._redis()
            if await client.set(key, self._token, nx=True, px=millis):
                return True
            return bool(await client.get(key) == self._token.encode())
        except (redis.RedisError, OSError) as exc:
            _alone(account, exc)
            return await super().take_probe(account, hold)

    async def closes(self, account: str) -> int | None:
        try:
            return int(await self._redis().get(f"{self._prefix}{account}:closes") or 0)
        except (redis.RedisError, OSError) as exc:
            _alone(account, exc)
            return await super().closes(account)

    async def closed(self, account: str) -> None:
        try:
            await self._redis().incr(f"{self._prefix}{account}:closes")
        except (redis.RedisError, OSError) as exc:
            _alone(account, exc)

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client[1], None
            await client.aclose(close_connection_pool=True)


def _alone(account: str, exc: BaseException) -> None:
    log.debug("shared circuit of %s unreachable, this process goes on alone: %r", account, exc)

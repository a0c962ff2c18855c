"""Delivering the outbox: claim due deliveries, POST each signed, record what came back.

Many requests are in flight at once (EVENTS_CONCURRENCY), each bounded by
EVENTS_TIMEOUT_SECONDS, so one slow endpoint costs its own events time, not everyone's. An
endpoint's host is resolved through a guard that refuses loopback and private addresses
(unless EVENTS_ALLOW_PRIVATE), checked at every request, so a name that later resolves
inward is refused then too. Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from sqlalchemy import Engine

from app.db import outbox
from app.domain import events
from app.domain.planning import utcnow
from app.settings import Settings

log = logging.getLogger("app.events")


class RefusedAddress(OSError):
    """The endpoint's host is (or resolves to) an address events may not go to."""


def check_host(host: str, *, allow_private: bool) -> None:
    """Refuse an IP literal that is not public, unless private ones are allowed."""
    if allow_private:
        return
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return  # a name: the resolver checks what it resolves to
    if events.private_address(host.strip("[]")):
        raise RefusedAddress(f"{host} is a loopback or private address (EVENTS_ALLOW_PRIVATE=0)")


def resolve_public(host: str) -> list[str]:
    """Every address ``host`` resolves to, refused if one of them is not public."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:  # UnicodeError: a name no resolver can take
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RefusedAddress(f"cannot resolve {host}: {reason}") from None
    addresses = sorted({str(info[4][0]) for info in infos})
    for address in addresses:
        if events.private_address(address):
            raise RefusedAddress(
                f"{host} resolves to {address}, a loopback or private address "
                "(EVENTS_ALLOW_PRIVATE=0)"
            )
    return addresses


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing names that resolve to non-public addresses."""

    def __init__(self) -> None:
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for entry in found:
            if events.private_address(entry["host"]):
                raise RefusedAddress(
                    f"{host} resolves to {entry['host']}, a loopback or private address "
                    "(EVENTS_ALLOW_PRIVATE=0)"
                )
        return found

    async def close(self) -> None:
        await self._inner.close()


@dataclass
class DeliveryReport:
    delivered: int = 0
    retrying: int = 0
    dead: int = 0

    @property
    def tried(self) -> int:
        return self.delivered + self.retrying + self.dead

    def add(self, results: list[outbox.Result]) -> None:
        for r in results:
            if isinstance(r, outbox.Delivered):
                self.delivered += 1
            elif r.retry_at is None:
                self.dead += 1
            else:
                self.retrying += 1


class Deliverer:
    """One pass over what is due, as many times as fits a time budget."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.clock = clock
        self.jitter = jitter

    @property
    def lease_seconds(self) -> float:
        """How long a claimed delivery is ours: it is claimed only when a request slot is
        free, so its request's whole deadline (connect + answer) and a margin to record it."""
        timeout = self.settings.events_timeout_seconds
        return timeout + min(5.0, timeout) + 10.0

    def run(self, *, budget_seconds: float = 20.0) -> DeliveryReport:
        """Deliver what is due until nothing is or the budget is spent (then what is in flight
        finishes and is recorded)."""
        return asyncio.run(self._run(budget_seconds))

    async def _run(self, budget_seconds: float) -> DeliveryReport:
        report = DeliveryReport()
        deadline = time.monotonic() + budget_seconds
        room = self.settings.events_concurrency
        timeout = aiohttp.ClientTimeout(
            total=self.settings.events_timeout_seconds,
            sock_connect=min(5.0, self.settings.events_timeout_seconds),
        )
        connector = aiohttp.TCPConnector(
            limit=room, resolver=None if self._private else GuardedResolver()
        )
        async with aiohttp.ClientSession(
            timeout=timeout, connector=connector, headers={"user-agent": "reminders-events/1"}
        ) as session:
            flying: set[asyncio.Task[outbox.Result]] = set()
            more = True  # the last claim filled every free slot: there may be more due
            while True:
                if more and len(flying) < room and time.monotonic() < deadline:
                    # A request slot is free: claim only what can go at once, so a claim's
                    # lease runs while its own request does, never while it waits.
                    free = room - len(flying)
                    due = await asyncio.to_thread(self._claim, free)
                    more = len(due) == free
                    flying.update(asyncio.create_task(self._post(session, d)) for d in due)
                if not flying:
                    break
                done, flying = await asyncio.wait(flying, return_when=asyncio.FIRST_COMPLETED)
                results = [t.result() for t in done]
                await asyncio.to_thread(self._record, results)
                report.add(results)
                more = more or time.monotonic() < deadline
        return report

    def _claim(self, limit: int) -> list[outbox.Due]:
        now = self.clock()
        with self.engine.begin() as conn:
            return outbox.claim_due(
                conn,
                now=now,
                lease_until=now + timedelta(seconds=self.lease_seconds),
                limit=limit,
            )

    def _record(self, results: list[outbox.Result]) -> None:
        with self.engine.begin() as conn:
            outbox.record(conn, results, now=self.clock())
        for r in results:
            if isinstance(r, outbox.NotDelivered) and r.retry_at is None:
                log.warning(
                    "event delivery %d dead after %d attempts: %s", r.id, r.attempt, r.error
                )

    async def _post(self, session: aiohttp.ClientSession, due: outbox.Due) -> outbox.Result:
        body = due.payload.encode()
        # Signed with the wall clock: a receiver checks the timestamp against its own.
        headers = events.headers(due.secret, msg_id=due.event_id, body=body, now=utcnow())
        try:
            check_host(urlsplit(due.url).hostname or "", allow_private=self._private)
            async with session.post(
                due.url, data=body, headers=headers, allow_redirects=False
            ) as answer:
                await answer.read()
                code = answer.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return self._failed(due, None, _describe(exc))
        if 200 <= code < 300:
            return outbox.Delivered(due.id, due.attempt, code)
        return self._failed(due, code, f"HTTP {code}")

    @property
    def _private(self) -> bool:
        return self.settings.events_allow_private

    def _failed(self, due: outbox.Due, code: int | None, error: str) -> outbox.NotDelivered:
        now = self.clock()
        s = self.settings
        retry_at: datetime | None = None
        if not events.gives_up(
            first_at=due.first_due_at, failed_at=now, retry_for=s.events_retry_seconds
        ):
            delay = events.retry_delay(
                due.attempt,
                base=s.events_backoff_seconds,
                cap=s.events_backoff_max_seconds,
                jitter=self.jitter(),
            )
            retry_at = now + timedelta(seconds=delay)
        return outbox.NotDelivered(due.id, due.attempt, code, error, retry_at)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]


def deliver_due(engine: Engine, settings: Settings, **options: Any) -> DeliveryReport:
    """The one code path of the worker task and ``reminders events deliver``."""
    return Deliverer(engine, settings).run(**options)

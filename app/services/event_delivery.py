"""Delivering the outbox: claim due deliveries, POST each signed, record what came back.

Many requests are in flight at once (EVENTS_CONCURRENCY), each bounded by
EVENTS_TIMEOUT_SECONDS, so one slow endpoint costs its own events time, not everyone's. An
endpoint's host is resolved through a guard that refuses loopback and private addresses
(unless EVENTS_ALLOW_PRIVATE), checked at every request, so a name that later resolves
inward is refused then too. Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import os
import random
import socket
import threading
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

from app.aioloop import LoopThread
from app.db import outbox
from app.domain import events
from app.domain.planning import utcnow
from app.settings import Settings

log = logging.getLogger("app.events")


#: After the first answer of a round, how long to wait for more before writing them together.
GATHER_SECONDS = 0.02


class RefusedAddress(OSError):
    """The endpoint's host is (or resolves to) an address events may not go to."""


def refuse_private(host: str, addresses: list[str]) -> None:
    """RefusedAddress naming the first of ``host``'s addresses that is not public."""
    for address in addresses:
        if events.private_address(address):
            how = "is" if address == host else f"resolves to {address},"
            raise RefusedAddress(
                f"{host} {how} a loopback or private address (EVENTS_ALLOW_PRIVATE=0)"
            )


def check_host(host: str, *, allow_private: bool) -> None:
    """Refuse an IP literal that is not public, unless private ones are allowed."""
    if allow_private:
        return
    literal = host.strip("[]")
    try:
        ipaddress.ip_address(literal)
    except ValueError:
        return  # a name: the resolver checks what it resolves to
    refuse_private(literal, [literal])


def resolve_public(host: str) -> list[str]:
    """Every address ``host`` resolves to, refused if one of them is not public."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:  # UnicodeError: a name no resolver can take
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RefusedAddress(f"cannot resolve {host}: {reason}") from None
    addresses = sorted({str(info[4][0]) for info in infos})
    refuse_private(host, addresses)
    return addresses


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing names that resolve to non-public addresses."""

    def __init__(self) -> None:
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        refuse_private(host, [entry["host"] for entry in found])
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
            results: list[outbox.Result] = []
            more = True  # the last claim filled every free slot: there may be more due
            while True:
                free = room - len(flying)
                # Claim only what can go at once, so a claim's lease runs while its own
                # request does, never while it waits for a slot.
                claim = free if more and free > 0 and time.monotonic() < deadline else 0
                if results or claim:
                    due = await asyncio.to_thread(self._settle, results, claim)
                    report.add(results)
                    results = []
                    if claim:
                        more = len(due) == claim
                        flying.update(asyncio.create_task(self._post(session, d)) for d in due)
                if not flying:
                    break
                done, flying = await asyncio.wait(flying, return_when=asyncio.FIRST_COMPLETED)
                if flying:  # answers close together are written together
                    later, flying = await asyncio.wait(flying, timeout=GATHER_SECONDS)
                    done |= later
                results = [t.result() for t in done]
                more = more or time.monotonic() < deadline
        return report

    def _settle(self, results: list[outbox.Result], claim: int) -> list[outbox.Due]:
        """One transaction: the answers that came back, and the next claim for the slots free."""
        now = self.clock()
        with self.engine.begin() as conn:
            outbox.record(conn, results, now=now)
            due = (
                outbox.claim_due(
                    conn,
                    now=now,
                    lease_until=now + timedelta(seconds=self.lease_seconds),
                    limit=claim,
                )
                if claim
                else []
            )
        for r in results:
            if isinstance(r, outbox.NotDelivered) and r.retry_at is None:
                log.warning(
                    "event delivery %d dead after %d attempts: %s", r.id, r.attempt, r.error
                )
        return due

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


class Background:
    """A worker process's delivery, on an event loop thread of its own ("events-io"): the
    Celery task only wakes it and returns, so no pool process is ever held by an endpoint,
    however slow, and sending and beat's tasks keep every process. It delivers what is due,
    then waits on its own for what comes due within a tick (a retry's backoff), and stops
    when nothing does; the next wake (a commit that wrote events, beat's tick) starts it
    again."""

    #: One pass's claims stop after this long, to look again at what else is due.
    PASS_SECONDS = 30.0
    #: How often a wait for the next due delivery looks whether it was woken meanwhile.
    POLL_SECONDS = 0.25

    def __init__(self) -> None:
        self._loop = LoopThread("events-io")
        self._lock = threading.Lock()
        self._running_in = 0  # the pid whose loop is delivering (0: none)
        self._again = False

    def wake(self, engine: Engine, settings: Settings) -> bool:
        """Start delivering in this process unless it already is (then it looks again before
        it stops). True if this call started it."""
        with self._lock:
            if self._running_in == os.getpid():
                self._again = True
                return False
            self._running_in, self._again = os.getpid(), False
        running = self._loop.submit(self._drive(engine, settings))
        running.add_done_callback(self._ended)
        return True

    def _ended(self, done: concurrent.futures.Future[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            log.error(
                "events: delivery stopped (%r); the next tick starts it again", done.exception()
            )
        with self._lock:
            self._running_in = 0

    async def _drive(self, engine: Engine, settings: Settings) -> None:
        deliverer = Deliverer(engine, settings)
        while True:
            report = await deliverer._run(self.PASS_SECONDS)
            if report.tried:
                log.info(
                    "events: delivered=%d retrying=%d dead=%d",
                    report.delivered,
                    report.retrying,
                    report.dead,
                )
            wait = await asyncio.to_thread(_due_in, engine)
            while True:
                with self._lock:
                    if self._again:
                        self._again = False
                        break
                    if wait is None or wait >= settings.tick_seconds:
                        self._running_in = 0  # a wake from now on starts a new one
                        return
                if wait <= 0:
                    break
                step = min(wait, self.POLL_SECONDS)
                await asyncio.sleep(step)
                wait -= step


def _due_in(engine: Engine) -> float | None:
    """Seconds until the next pending delivery is due (None: none is)."""
    with engine.connect() as conn:
        due = outbox.next_due(conn)
    return None if due is None else (due - utcnow()).total_seconds()


_background = Background()


def background() -> Background:
    """This process's background delivery."""
    return _background


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]


def deliver_due(engine: Engine, settings: Settings, **options: Any) -> DeliveryReport:
    """The one code path of the worker task and ``reminders events deliver``."""
    return Deliverer(engine, settings).run(**options)

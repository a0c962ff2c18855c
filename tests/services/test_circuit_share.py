"""Two processes sending through one provider account share its circuit (through Redis): while
the provider is down, one request at a time probes it for both; when one process's request gets
through, the other closes too, without waiting for a probe of its own."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, date, datetime
from datetime import time as dtime
from types import SimpleNamespace
from typing import cast

import pytest

from app.domain.circuit import Admit
from app.providers.base import SmsProvider, TransientError
from app.services.circuit_share import RedisCircuitShare
from app.services.send.delivery import LOOK_EVERY, CircuitChange, Delivery
from app.services.send.prepare import Text
from app.settings import Settings

pytestmark = pytest.mark.timeout(60)


class Provider:
    """The provider account both processes send through: down (503 for every number) or up."""

    name = "twilio"
    account = "AC0123"
    can_reconcile = False
    paced = True

    def __init__(self) -> None:
        self.down = True
        self.requests = 0

    async def send_async(
        self,
        to: str,
        body: str,
        sender: str | None,
        *,
        valid_for: int | None = None,
        send_by: float | None = None,
    ) -> str:
        self.requests += 1
        if self.down:
            raise TransientError("Service Unavailable", code="503")
        return f"SM{self.requests:032d}"


def text(i: int) -> Text:
    row = SimpleNamespace(id=i, phone_e164=f"+1202555{i:04d}")
    org = SimpleNamespace(sender="+12025550100", timezone="UTC", window=(dtime(0), dtime(0)))
    return cast(
        Text, SimpleNamespace(row=row, org=org, body="hi", ignore_window=True, today=date.today())
    )


def process(provider: Provider, share: RedisCircuitShare, changes: list[object]) -> Delivery:
    return Delivery(
        cast(SmsProvider, provider),
        Settings(retry_backoff_seconds=1.0),  # type: ignore[call-arg]
        lambda: datetime.now(UTC),
        changes.append,
        share=share,
    )


async def open_circuit(delivery: Delivery, first: int) -> None:
    for i in range(first, first + 5):  # five numbers fail: the provider is down for everyone
        await delivery.deliver(text(i), 1, probe=False)
    assert delivery.breaker.is_open


def test_one_probe_for_all_processes_and_a_close_seen_by_all(redis_url: str) -> None:
    provider = Provider()
    changes_a: list[object] = []
    changes_b: list[object] = []

    async def scenario() -> None:
        a = process(provider, RedisCircuitShare(redis_url), changes_a)
        b = process(provider, RedisCircuitShare(redis_url), changes_b)
        try:
            await open_circuit(a, 0)
            await open_circuit(b, 10)
            await asyncio.sleep(a.breaker.probe_every)  # both are due to probe
            assert await a.admit() is Admit.PROBE
            assert await b.admit() is Admit.WAIT  # a holds the account's probe
            a.breaker.cancelled_probe()  # a's probe text did not go (it missed its slot) ...
            assert await a.admit() is Admit.PROBE  # ... a tries again at once, as if alone
            assert await b.admit() is Admit.WAIT
            provider.down = False
            before = provider.requests
            await a.deliver(text(99), 1, probe=True)  # the probe gets through: a closes
            assert not a.breaker.is_open
            await asyncio.sleep(LOOK_EVERY)
            assert await b.admit() is Admit.SEND  # b sees it: closed, no probe of its own
            assert not b.breaker.is_open and provider.requests == before + 1
        finally:
            await a.share.aclose()
            await b.share.aclose()

    asyncio.run(scenario())
    # Each process records its own open and close in the ledger's circuit table.
    assert [isinstance(c, CircuitChange) and c.opened_at is None for c in changes_b] == [
        False,
        True,
    ]


def test_without_redis_a_process_probes_on_its_own() -> None:
    """The shared circuit unreachable: each process goes on as if alone (probes, closes)."""
    provider = Provider()

    async def scenario() -> None:
        a = process(provider, RedisCircuitShare("redis://127.0.0.1:1/0"), [])
        try:
            await open_circuit(a, 0)
            await asyncio.sleep(a.breaker.probe_every)
            started = time.monotonic()
            assert await a.admit() is Admit.PROBE
            assert time.monotonic() - started < 3.0
            provider.down = False
            await a.deliver(text(99), 1, probe=True)
            assert not a.breaker.is_open
        finally:
            await a.share.aclose()

    asyncio.run(scenario())

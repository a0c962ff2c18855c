"""The per-sender rate limit holds across processes: two limiters sharing Redis share the rate."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time

import redis

from app.services.ratelimit import FallbackRateLimiter, LocalRateLimiter
from app.services.ratelimit_redis import RedisRateLimiter


def test_two_limiters_on_one_key_share_the_rate(broker: str) -> None:
    limiters = [RedisRateLimiter.from_url(broker) for _ in range(2)]
    stamps: list[float] = []
    lock = threading.Lock()

    def send(limiter: RedisRateLimiter) -> None:
        for _ in range(10):
            limiter.acquire("console:+15550001", 50.0)
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=send, args=(lim,)) for lim in limiters for _ in range(2)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 40 texts at 50/s: the first goes at once, the last no sooner than 39/50 s later.
    assert max(stamps) - start >= 39 / 50 - 0.02
    stamps.sort()
    window = [s for s in stamps if s - stamps[0] < 0.2]
    assert len(window) <= 11  # never more than 0.2 s x 50/s (+1 for the edge) in any 0.2 s


def test_other_keys_are_not_slowed(broker: str) -> None:
    limiter = RedisRateLimiter.from_url(broker)
    limiter.acquire("console:slow", 1.0)
    start = time.monotonic()
    limiter.acquire("console:slow-other", 1.0)
    assert time.monotonic() - start < 0.2


def test_booking_from_the_event_loop_shares_the_timeline(broker: str) -> None:
    """The engine books on its event loop; another process books synchronously: one timeline."""
    worker, other = RedisRateLimiter.from_url(broker), RedisRateLimiter.from_url(broker)
    first, granted, spacing = other.reserve("twilio:+15550002", 10.0, 5, 10.0)
    assert (granted, spacing) == (5, 0.1) and first < 0.05

    async def book() -> tuple[float, int, float]:
        try:
            return await worker.reserve_async("twilio:+15550002", 10.0, 5, 10.0)
        finally:
            await worker.aclose()

    try:
        wait, granted, _ = asyncio.run(book())
        assert granted == 5 and 0.4 <= wait <= 0.5  # after the other's five slots, not on them
        wait, granted, _ = other.reserve("twilio:+15550002", 10.0, 1, 10.0)
        assert granted == 1 and 0.9 <= wait <= 1.0
    finally:
        worker.close()
        other.close()


def test_slots_start_no_sooner_than_asked_but_a_busy_timeline_is_not_pushed_back(
    broker: str,
) -> None:
    """A caller needing 0.2 s to get its texts ready asks for nothing sooner: an idle sender's
    slots start then (not now, to pass unused); a sender booked further ahead is unchanged,
    and no slot is left between the two bookings."""
    shared = RedisRateLimiter.from_url(broker)
    try:
        for limiter in (shared, LocalRateLimiter()):
            key = f"twilio:+1555000{3 if limiter is shared else 4}"
            first, granted, _ = limiter.reserve(key, 10.0, 3, 10.0, 0.2)
            assert granted == 3 and 0.18 <= first <= 0.201
            first, granted, _ = limiter.reserve(key, 10.0, 1, 10.0, 0.2)
            assert granted == 1 and 0.48 <= first <= 0.501  # right after the three: 0.2 + 0.3
    finally:
        shared.close()


def _book_at_once(
    limiter: RedisRateLimiter | FallbackRateLimiter, keys: list[str]
) -> list[tuple[float, int, float]]:
    """Two slots at 10/s for each of ``keys``, asked for at the same moment on one event loop
    (as a process's lanes do); the limiter is closed afterwards."""

    async def book_all() -> list[tuple[float, int, float]]:
        try:
            return await asyncio.wait_for(
                asyncio.gather(*(limiter.reserve_async(k, 10.0, 2, 10.0) for k in keys)),
                timeout=10,
            )
        finally:
            await limiter.aclose()

    try:
        return asyncio.run(book_all())
    finally:
        limiter.close()


def test_lanes_booking_at_once_share_one_round_trip_and_each_key_its_own_timeline(
    broker: str,
) -> None:
    """Many senders' lanes booking on one loop at the same moment: every slot of a key is
    booked once (one after the other, none shared), another key is not pushed back, and the
    bookings travel together instead of one script call each."""
    stats = redis.Redis.from_url(broker)
    stats.config_resetstat()
    keys = [f"twilio:+1555001{i % 4}" for i in range(20)]
    answers = _book_at_once(RedisRateLimiter.from_url(broker), keys)
    booked = [(key, *got) for key, got in zip(keys, answers, strict=True)]
    commands = stats.info("commandstats")
    calls = sum(int(commands.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))
    for key in {k for k, *_ in booked}:
        firsts = sorted(first for k, first, granted, _ in booked if k == key)
        assert all(granted == 2 for k, _, granted, _ in booked if k == key)
        # Five lanes of two slots each at 10/s: 0, 0.2, 0.4, 0.6, 0.8 s (one timeline each).
        gaps = [b - a for a, b in itertools.pairwise(firsts)]
        assert firsts[0] < 0.05 and all(0.19 <= g <= 0.21 for g in gaps), (key, firsts)
    assert 1 <= calls <= 3, calls  # 20 bookings, not 20 round trips


def test_lanes_booking_at_once_when_redis_is_down_all_fall_back_none_hangs() -> None:
    """Redis unreachable: every lane gathered into the failed call hears it at once (none waits
    for an answer that never comes), and the process limits its senders on its own instead."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    limiter = FallbackRateLimiter(
        RedisRateLimiter.from_url(f"redis://127.0.0.1:{port}/0"), LocalRateLimiter()
    )
    booked = _book_at_once(limiter, ["twilio:+15550020"] * 5)
    # The process's own timeline: ten slots at 10/s, one after the other.
    firsts = sorted(first for first, granted, _ in booked if granted == 2)
    assert len(firsts) == 5 and firsts[-1] >= 0.75, booked

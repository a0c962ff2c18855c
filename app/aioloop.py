"""One asyncio event loop per process, in a daemon thread, for the sends in flight.

The engine's batch runs on it (slot waits are timers, not sleeping threads) and the Twilio
adapter's HTTP client lives on it, so a send costs no thread hand-off. It is started on first
use and again after a fork: a forked child never inherits a running loop thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def monotonic() -> float:
    """The OS monotonic clock, read directly: rate pacing is about real elapsed time, whatever
    the business clock says (tests freeze ``time.monotonic``; this one keeps running)."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def yield_to_loop() -> None:
    """Give the GIL up for a moment, from a thread doing a long stretch of CPU work beside
    the shared loop (rendering a batch's texts, say).

    CPython takes the GIL from a busy thread only once its switch interval (5 ms) has passed:
    the loop's timers, each a text's slot, would wait up to that long, and a text more than
    LATE_TOLERANCE late gives its slot up. ``sleep(0)`` releases the GIL and asks for it
    again, so a loop thread waiting for it can run now (about a microsecond otherwise)."""
    time.sleep(0)


class RealTimeLoop(asyncio.SelectorEventLoop):
    """Timers on ``monotonic()``, so they keep real time in tests that freeze the clock."""

    def time(self) -> float:
        return monotonic()


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (the requirements pin it): its transports, timers
    and callbacks run in C, which is most of what a send costs the loop (bench/compare.sh).
    Its clock is the OS monotonic clock read in C, which tests freezing time do not touch,
    like RealTimeLoop's. Its timers fire on whole milliseconds, so one may fire up to about a
    millisecond early: a caller to whom early matters checks ``monotonic()`` itself."""
    try:
        import uvloop
    except ImportError:  # a platform uvloop does not build on
        return RealTimeLoop()
    return uvloop.new_event_loop()


class LoopThread:
    """One event loop in a daemon thread, started lazily in the process that uses it."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None and self._pid == os.getpid():
            return loop
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                # After a fork the parent's loop thread does not exist here: start afresh.
                loop = new_loop()
                ready = threading.Event()
                thread = threading.Thread(
                    target=self._serve, args=(loop, ready), name=self._name, daemon=True
                )
                thread.start()
                ready.wait()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
            assert self._loop is not None
            return self._loop

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._running_loop())

    @property
    def started(self) -> bool:
        return self._loop is not None and self._pid == os.getpid()


_shared = LoopThread("sms-io")


def shared_loop() -> LoopThread:
    """This process's loop for sends: the engine's batches and the providers' HTTP clients."""
    return _shared

"""Claims, just before each request: one thread claims for the whole process, every text
whose slot is coming in one conditional UPDATE (a day's pace puts a few in each)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from queue import Empty, SimpleQueue

from sqlalchemy import Engine

from app.aioloop import monotonic
from app.db import ledger
from app.services.send.prepare import Text

log = logging.getLogger("app.engine")

MAX_PER_CLAIM = 500
# The claimer gathers what comes within this long into one statement (texts are claimed
# CLAIM_AHEAD before their slots, so a few milliseconds cost no text its slot).
GATHER_SECONDS = 0.04

_Waiting = tuple[Text, "asyncio.Future[int | None]", asyncio.AbstractEventLoop]
_STOP = object()


class Claimer:
    def __init__(self, engine: Engine, clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self._clock = clock
        self._queue: SimpleQueue[_Waiting | object] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def claim(self, text: Text) -> int | None:
        """Claim the text's row: its attempt number, or None if it is no longer ours to send
        (someone else claimed it, or it is no longer due)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int | None] = loop.create_future()
        self._ensure_thread()
        self._queue.put((text, future, loop))
        return await future

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout=30)

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="sms-claims", daemon=True
                    )
                    self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            waiting = [first]
            stop = False
            until = monotonic() + GATHER_SECONDS
            while len(waiting) < MAX_PER_CLAIM:
                try:
                    more = self._queue.get(timeout=max(0.0, until - monotonic()))
                except Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                waiting.append(more)
            self._claim([w for w in waiting if isinstance(w, tuple)])
            if stop:
                return

    def _claim(self, waiting: list[_Waiting]) -> None:
        claims = [ledger.Claim(t.row.id, t.ignore_window, t.changes) for t, _, _ in waiting]
        try:
            with self._engine.begin() as conn:
                won = ledger.claim_texts(conn, claims, now=self._clock())
        except Exception as exc:  # noqa: BLE001 - nothing claimed: each text hears why
            log.warning("could not claim %d texts: %r", len(waiting), exc)
            for _, future, loop in waiting:
                loop.call_soon_threadsafe(_fail, future, exc)
            return
        for text, future, loop in waiting:
            loop.call_soon_threadsafe(_resolve, future, won.get(text.row.id))


def _resolve(future: asyncio.Future[int | None], attempt: int | None) -> None:
    if not future.done():
        future.set_result(attempt)


def _fail(future: asyncio.Future[int | None], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)

"""Claims, just before each request: one thread claims for the whole process, every text
whose slot is coming in one conditional UPDATE (a day's pace puts a few in each)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from app.aioloop import monotonic
from app.db import ledger
from app.services.send.prepare import Text
from app.services.send.queue_thread import QueueThread

log = logging.getLogger("app.engine")

MAX_PER_CLAIM = 100  # callers (lanes) per statement
# The claimer gathers what comes within this long into one statement (texts are claimed
# ahead of their slots by two round trips, so a few milliseconds cost no text its slot). Not
# longer: the round trip sets how early texts are claimed, and so how long each holds a permit.
GATHER_SECONDS = 0.01

_Waiting = tuple[list[Text], "asyncio.Future[dict[int, int]]", asyncio.AbstractEventLoop]


class Claimer(QueueThread["_Waiting"]):
    thread_name = "sms-claims"
    group_size = MAX_PER_CLAIM
    gather_seconds = GATHER_SECONDS

    def __init__(self, engine: Engine, clock: Callable[[], datetime]) -> None:
        self.latency = 0.0  # a claim's recent round trip, gathering included, smoothed (s)
        self._engine = engine
        self._clock = clock
        super().__init__()

    def ahead(self) -> float:
        """How long before its slot a text should be claimed: room for two of the recent
        round trips (a busy process claims earlier). Not more: a claimed text holds one of
        SMS_CONCURRENCY's permits from its claim until its outcome is written."""
        return min(0.5, max(0.05, 2 * self.latency))

    async def claim(self, texts: list[Text]) -> dict[int, int]:
        """Claim these texts' rows: {row id: attempt} of those won; a row missing is no longer
        ours to send (someone else claimed it, or it is no longer due)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[int, int]] = loop.create_future()
        asked = monotonic()
        self._hand((texts, future, loop))
        try:
            return await future
        finally:
            self.latency += 0.05 * ((monotonic() - asked) - self.latency)

    def _process(self, waiting: list[_Waiting]) -> None:
        claims = [
            ledger.Claim(t.row.id, t.ignore_window, t.changes)
            for texts, _, _ in waiting
            for t in texts
        ]
        won: dict[int, int] | BaseException
        try:
            with self._engine.begin() as conn:
                won = ledger.claim_texts(conn, claims, now=self._clock())
        except Exception as exc:  # noqa: BLE001 - nothing claimed: each caller hears why
            log.warning("could not claim %d texts: %r", len(claims), exc)
            won = exc
        # A row twice in one statement (two batches holding it, after a redelivery) is
        # updated once: only the first text asking for it has won it.
        answers: list[dict[int, int] | BaseException] = []
        taken: set[int] = set()
        for texts, _, _ in waiting:
            if isinstance(won, BaseException):
                answers.append(won)
                continue
            mine: dict[int, int] = {}
            for t in texts:
                rid = t.row.id
                if rid in won and rid not in taken:
                    taken.add(rid)
                    mine[rid] = won[rid]
            answers.append(mine)
        # One hand-over to each loop for the whole group.
        by_loop: dict[int, tuple[asyncio.AbstractEventLoop, list[tuple[_Waiting, Any]]]] = {}
        for w, answer in zip(waiting, answers, strict=True):
            by_loop.setdefault(id(w[2]), (w[2], []))[1].append((w, answer))
        for loop, group in by_loop.values():
            loop.call_soon_threadsafe(_answer, group)


def _answer(group: list[tuple[_Waiting, dict[int, int] | BaseException]]) -> None:
    for (_, future, _), answer in group:
        if future.done():
            continue
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(answer)

"""Recording: one writer thread per process takes every batch's outcomes and writes them in
groups (at most FLUSH_ROWS, or after FLUSH_SECONDS), one statement per kind of outcome, then
counts each into its batch's report. A batch is done when its last text is counted."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine

from app.db import ledger, undeliverable
from app.domain.phones import mask_phone
from app.metrics import worker as worker_metrics
from app.services.send.delivery import CircuitChange, Delivered
from app.services.send.prepare import Text
from app.services.send.queue_thread import QueueThread
from app.services.send.report import SendReport

log = logging.getLogger("app.engine")

FLUSH_ROWS = 100
# Not longer: a text's permit comes back only once its outcome is written, so every
# millisecond here is held by every text (bench/compare.sh: 50 -> 25 ms gave 1.06x the day).
FLUSH_SECONDS = 0.025


@dataclass(frozen=True)
class Waits:
    """A text that was not claimed waits, ``pending``, until ``until`` (``DEFERRED`` or
    ``HELD``)."""

    until: datetime
    reason: str


@dataclass(frozen=True)
class Lost:
    """Someone else claimed the row first, or it is no longer due: nothing to write."""


Note = Delivered | Waits | Lost


class Batch:
    """One submitted batch: its report fills as its texts' notes are written."""

    def __init__(self, report: SendReport, total: int, on_done: Callable[[], None]) -> None:
        self.report = report
        self.total = total
        self.counted = 0
        self.future: Future[SendReport] = Future()
        self._on_done = on_done

    def counted_more(self, n: int) -> None:
        self.counted += n
        if self.counted >= self.total and not self.future.done():
            self.future.set_result(self.report)
            self._on_done()

    def fail(self, exc: BaseException, n: int) -> None:
        """Notes that could not be written: their rows stay as they were (the sweeper's job)."""
        self.counted += n
        if not self.future.done():
            self.future.set_exception(exc)
            self._on_done()


#: A note, and what to call once it is written, with how many such notes a group held (a
#: claimed text's permit is given back then: a process never has more rows in ``sending``
#: than SMS_CONCURRENCY).
_Item = tuple[Batch, Text, Note, Callable[[int], None] | None] | CircuitChange


class Recorder(QueueThread["_Item"]):
    thread_name = "sms-outcomes"
    group_size = FLUSH_ROWS
    gather_seconds = FLUSH_SECONDS

    def __init__(self, engine: Engine, clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self._clock = clock
        super().__init__()

    def put(
        self, batch: Batch, text: Text, note: Note, after: Callable[[int], None] | None = None
    ) -> None:
        self._hand((batch, text, note, after))

    def circuit(self, change: CircuitChange) -> None:
        self._hand(change)

    def _process(self, items: list[_Item]) -> None:
        try:
            self._write_notes(items)
        finally:
            # What waits for the group to be written (permits), called once per distinct
            # callable with how many of its notes there were.
            after: dict[int, tuple[Callable[[int], None], int]] = {}
            for item in items:
                if not isinstance(item, CircuitChange) and item[3] is not None:
                    done = item[3]
                    after[id(done)] = (done, after.get(id(done), (done, 0))[1] + 1)
            for done, n in after.values():
                done(n)

    def _write_notes(self, items: list[_Item]) -> None:
        now = self._clock()
        notes = [(b, t, n) for b, t, n, _ in (i for i in items if not isinstance(i, CircuitChange))]
        outcomes = [(b, t, n) for b, t, n in notes if isinstance(n, Delivered)]
        waits: dict[tuple[datetime, str], list[int]] = {}
        for _, t, n in notes:
            if isinstance(n, Waits):
                waits.setdefault((n.until, n.reason), []).append(t.row.id)
        try:
            with self._engine.begin() as conn:
                for change in (i for i in items if isinstance(i, CircuitChange)):
                    ledger.save_circuit(
                        conn,
                        account=change.account,
                        opened_at=change.opened_at,
                        failures=change.failures,
                        numbers=change.numbers,
                        now=now,
                    )
                for _, t, n in outcomes:
                    if n.opted_out and t.row.phone_e164:
                        ledger.add_opt_out(
                            conn,
                            org_id=t.org.id,
                            phone_e164=t.row.phone_e164,
                            source="provider",
                            now=now,
                        )
                    if n.undeliverable and t.row.phone_e164:
                        refusal = n.outcome if isinstance(n.outcome, ledger.Failed) else None
                        undeliverable.mark(
                            conn,
                            org_id=t.org.id,
                            phone_e164=t.row.phone_e164,
                            code=(refusal.code if refusal else None) or "",
                            now=now,
                        )
                moved = ledger.record(conn, [n.outcome for _, _, n in outcomes], now=now)
                for (until, reason), ids in waits.items():
                    ledger.wait(conn, ids, until=until, reason=reason, now=now)
        except Exception as exc:
            log.exception("could not record %d outcomes; the sweeper will settle them", len(notes))
            by_batch: dict[int, tuple[Batch, int]] = {}
            for b, _, _ in notes:
                by_batch[id(b)] = (b, by_batch.get(id(b), (b, 0))[1] + 1)
            for b, failed in by_batch.values():
                b.fail(exc, failed)
            return
        # Outcomes someone else settled first count as lost (which of a kind's rows they were
        # is not known, only how many).
        lost: set[int] = set()
        for kind, n_moved in moved.items():
            of_kind = [id(n) for _, _, n in outcomes if type(n.outcome) is kind]
            if n_moved < len(of_kind):
                log.warning("%d outcomes found their rows already moved", len(of_kind) - n_moved)
                lost.update(of_kind[n_moved:])
        counted: dict[int, tuple[Batch, int]] = {}
        for b, t, n in notes:
            _tally(b.report, t, n, lost=id(n) in lost)
            if isinstance(n, Delivered) and id(n) not in lost:
                _log_outcome(t, n.outcome)
            counted[id(b)] = (b, counted.get(id(b), (b, 0))[1] + 1)
        for b, n_counted in counted.values():
            b.counted_more(n_counted)


def _tally(report: SendReport, text: Text, note: Note, *, lost: bool) -> None:
    if lost or isinstance(note, Lost):
        report.count("lost")
        worker_metrics.count_text("lost")
        return
    code: str | None = None
    if isinstance(note, Waits):
        counter, until = ("held" if note.reason == ledger.HELD else "deferred"), note.until
    else:
        o = note.outcome
        match o:
            case ledger.Sent():
                counter, until = "sent", None
            case ledger.Retry():
                counter, until, code = "retrying", None, o.code
                report.retry_at.append(o.at)
            case ledger.Failed():
                counter, until, code = "failed", None, o.code
            case ledger.Unknown():
                counter, until, code = "unknown", None, o.code
            case ledger.PutBack():
                counter, until = ("held" if o.reason == ledger.HELD else "deferred"), o.until
                code = o.code
    report.count(counter)
    worker_metrics.count_text(counter, code=code)
    if counter == "held" and until is not None:
        report.note_held(text.org.slug, until)


def _log_outcome(text: Text, o: ledger.Outcome) -> None:
    if isinstance(o, ledger.PutBack) and o.reason == ledger.DEFERRED and not o.code:
        return
    row = text.row
    code: str | None = None
    match o:
        case ledger.Sent():
            what, level, reason = "sent", logging.INFO, None
        case ledger.Retry():
            what, level, reason, code = "retry scheduled", logging.INFO, "retrying", o.code
        case ledger.Failed():
            what, level, reason, code = "failed", logging.WARNING, o.reason, o.code
        case ledger.Unknown():
            what, level, reason, code = "unknown", logging.WARNING, "outcome_unknown", o.code
        case ledger.PutBack():
            what, level, reason, code = "put back", logging.INFO, o.reason, o.code
    log.log(
        level,
        "text %s org=%s id=%d to=%s attempt=%d%s%s",
        what,
        text.org.slug,
        row.id,
        mask_phone(row.phone_e164 or row.phone),
        o.attempt,
        f" code={code}" if code else "",
        f" reason={reason}" if reason else "",
    )

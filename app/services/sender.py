"""Sending ledger rows: hold, claim, re-check, rate-limit, send many at once, record outcomes.

The provider is slow (100–300 ms a call) and each sender has a rate limit, so throughput comes
from many sends in flight per process, slots booked for a whole batch at once, and outcomes
written in groups. A batch runs as coroutines on the process's shared event loop
(``app.aioloop``): a text waiting for its slot is a timer, and an async provider (Twilio) is
awaited with no thread per send; a provider that can only block runs on a thread pool.

Every row is claimed with one conditional UPDATE before the provider is called; a crash between
the provider's answer and the group write leaves those rows in ``sending``, an unknown outcome
that reconciliation settles (never a blind resend).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from queue import Empty, SimpleQueue
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, case, select, update

from app.aioloop import monotonic, shared_loop
from app.db import ledger
from app.db.models import Reminder
from app.domain import planning, rules
from app.domain.phones import mask_phone
from app.domain.segments import count_segments
from app.providers.base import PermanentError, SmsProvider, TransientError, UnknownOutcomeError
from app.services.engine import OrgConfig, TemplateBook, load_orgs, render_body
from app.services.ratelimit import NoRateLimit, RateLimiter
from app.settings import Settings

log = logging.getLogger("app.engine")

# Outcomes are written in groups of at most this many, or after this long.
FLUSH_ROWS = 100
FLUSH_SECONDS = 0.05
# A sender's texts in a batch wait at most this long in all for its rate-limit slots; the rest
# go back to the ledger for later. Time spent waiting for this process (its CPU, its
# SMS_CONCURRENCY) does not count: only the sender's rate defers a text.
MAX_RATE_WAIT = 20.0
# Slots are booked this far ahead of use (a few per sender at a time).
BOOK_AHEAD = 0.25
# A process takes a new batch while its senders have less than this many seconds of slots
# queued here, and waits at most ADMIT_TIMEOUT seconds for that.
ADMIT_AHEAD = 1.0
ADMIT_TIMEOUT = 120
# Slots are booked at this share of a sender's rate, and a text may leave up to LATE_TOLERANCE
# after its slot (event-loop and scheduler lag on a busy machine); a text that would be later
# gives its slot up and books a fresh one. Slots are 1/(RATE_MARGIN*rate) apart on a timeline
# every process shares, so any one-second window holds the sends of slots from an interval of
# 1 + LATE_TOLERANCE seconds: fewer than RATE_MARGIN * rate * (1 + LATE_TOLERANCE) + 1, which
# stays within a whole-number rate while (1 + LATE_TOLERANCE) * RATE_MARGIN < 1. At 0.8 and
# 0.1 that leaves another 150 ms for a request to reach the provider once it is let go (the loop
# writing it, the network, the provider reading it), so the rate holds where it counts: at the
# receiving end, even on a saturated machine (bench/send_day.py --provider twilio checks it).
RATE_MARGIN = 0.8
LATE_TOLERANCE = 0.1


COUNTERS = ("sent", "failed", "skipped", "retrying", "unknown", "held", "deferred", "lost")


@dataclass
class SendReport:
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    retrying: int = 0  # transient failure, back to pending with a next attempt
    unknown: int = 0  # outcome unknown, waiting for reconciliation
    held: int = 0  # outside the send window, waiting for it to open
    held_until: dict[str, datetime] = field(default_factory=dict)  # org slug -> window opens
    deferred: int = 0  # no rate-limit slot soon enough, back to pending
    lost: int = 0  # claimed or moved by someone else first
    retry_at: list[datetime] = field(default_factory=list)

    def add(self, other: SendReport) -> None:
        for name in (
            "sent",
            "failed",
            "skipped",
            "retrying",
            "unknown",
            "held",
            "deferred",
            "lost",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.retry_at.extend(other.retry_at)
        for slug, opens in other.held_until.items():
            self.note_held(slug, opens)

    def note_held(self, slug: str, opens: datetime) -> None:
        """Texts of ``slug`` wait for its window: the earliest opening is what a user needs."""
        self.held_until[slug] = min(opens, self.held_until.get(slug, opens))


@dataclass(frozen=True)
class Ready:
    """A claimed row that is still due, with its text, waiting for a slot of its sender."""

    row: ledger.ClaimedRow
    org: OrgConfig
    body: str
    text: dict[str, Any]  # the columns the outcome records: body, days_left, segments, encoding
    key: str  # the rate-limit key of its sender
    rate: float  # slots per second booked for that sender
    today: date  # the organization's local date its text was made for (R3)
    ignore_window: bool  # this run was given --ignore-window (R4)


@dataclass
class Outcome:
    """What happened to one claimed row, waiting to be written with its group."""

    row: ledger.ClaimedRow
    org: OrgConfig
    # sent | failed | skipped | unknown | pending (retry) | deferred (no slot, or made for a
    # local date that has passed) | held (its window closed before it left)
    status: str
    values: dict[str, Any]
    opt_out: bool = False


# Columns an outcome may set; each group write names all of them (NULL where unset).
_OUTCOME_COLUMNS = (
    "reason",
    "error_code",
    "error_message",
    "provider_message_id",
    "body",
    "template_fallback",
    "days_left",
    "segments",
    "encoding",
    "sent_at",
    "next_attempt_at",
)
# Columns an outcome keeps as they are when it does not set them.
_KEEP_UNLESS_SET = (
    "body",
    "template_fallback",
    "days_left",
    "segments",
    "encoding",
    "next_attempt_at",
)
# A text sent with its planned body sets only these (and clears any earlier error).
_SENT_COLUMNS = frozenset({"provider_message_id", "sent_at"})
_SENT_AS_PLANNED = "sent as planned"
# Outcomes of texts that were not tried, and the reason their rows wait with.
_PUT_BACK = {"deferred": ledger.DEFERRED, "held": ledger.HELD}


class _Lane:
    """One sender's texts of one batch, as its pacer works through them."""

    def __init__(self, queue: deque[Ready]) -> None:
        self.queue = queue
        self.starting = 0  # let go, their task not yet run (it may find its slot gone)
        self.wake = asyncio.Event()


class _Batch:
    """One submitted batch: its report fills as the writer records its outcomes."""

    def __init__(self, sender: Sender, report: SendReport, total: int) -> None:
        self.sender = sender
        self.report = report
        self.total = total
        self.written = 0
        self.future: Future[SendReport] = Future()

    def put(self, outcome: Outcome) -> None:
        """From the loop (or the submitting thread): one outcome, for the writer."""
        self.sender._outcomes.put((self, outcome))

    def written_more(self, n: int) -> None:
        self.written += n
        if self.written >= self.total and not self.future.done():
            self.future.set_result(self.report)
            self.sender._closed_batch()

    def fail(self, exc: BaseException, n: int) -> None:
        """Outcomes that could not be recorded: their rows stay in ``sending``."""
        self.written += n
        if not self.future.done():
            self.future.set_exception(exc)
            self.sender._closed_batch()

    def check_running(self, running: Future[None]) -> None:
        """The loop's part ended: if it broke, the outcomes it owed will never come."""
        exc = CancelledError() if running.cancelled() else running.exception()
        if exc is not None:
            log.error("send batch broke on the event loop: %r", exc)
            self.fail(exc, self.total - self.written)


_STOP = object()


class Sender:
    """One per process: it owns the provider client and runs its batches on the shared loop."""

    def __init__(
        self,
        *,
        engine: Engine,
        provider: SmsProvider,
        settings: Settings,
        limiter: RateLimiter | None = None,
        clock: Callable[[], datetime] = planning.utcnow,
        max_rate_wait: float = MAX_RATE_WAIT,
    ) -> None:
        self.max_rate_wait = max_rate_wait
        self.engine = engine
        self.provider = provider
        self.settings = settings
        self.limiter = limiter or NoRateLimit()
        self.clock = clock
        # For a provider that can only block, and for limiter calls made from the loop;
        # threads start only when used.
        self._pool = ThreadPoolExecutor(
            max_workers=settings.send_concurrency, thread_name_prefix="sms"
        )
        # Outcomes of every open batch go to one writer thread, written in groups.
        self._outcomes: SimpleQueue[tuple[_Batch, Outcome] | object] = SimpleQueue()
        self._writer: threading.Thread | None = None
        self._open = 0
        self._backlog: dict[str, int] = {}  # texts admitted, not yet sent, per rate-limit key
        self._ahead: dict[str, float] = {}  # the backlog under which a key takes more
        self._open_changed = threading.Condition()
        self._inflight: asyncio.Semaphore | None = None  # made on the loop, for the process
        send_async = getattr(provider, "send_async", None)
        self._send_async: Callable[..., Awaitable[str]] | None = (
            send_async if callable(send_async) else None
        )

    def close(self, timeout: float = 45.0) -> None:
        """Let the open batches finish (their texts are in flight), then release everything."""
        with self._open_changed:
            closed = self._open_changed.wait_for(lambda: self._open == 0, timeout)
        if not closed:
            log.warning("closing with %d send batches still open", self._open)
        if self._writer is not None:
            self._outcomes.put(_STOP)
            self._writer.join(timeout=30)
            self._writer = None
        self._pool.shutdown(wait=True)
        close = getattr(self.provider, "close", None)
        if callable(close):
            close()
        aclose = getattr(self.limiter, "aclose", None)
        if callable(aclose) and shared_loop().started:
            shared_loop().submit(aclose()).result(timeout=5)
        close = getattr(self.limiter, "close", None)
        if callable(close):
            close()

    def default_sender(self) -> str | None:
        s = self.settings
        if s.sms_provider == "twilio":
            return s.twilio_messaging_service_sid or s.twilio_from_number
        return None

    def rate_key(self, org: OrgConfig) -> str:
        return f"{self.provider.name}:{org.sender or self.default_sender() or 'default'}"

    # --- one batch -------------------------------------------------------------------------

    def send_ids(
        self,
        ids: Sequence[int],
        *,
        ignore_window: bool = False,
        report: SendReport | None = None,
    ) -> SendReport:
        """Hold what is outside its window, claim the rest, send, record the outcomes."""
        return self.submit_ids(ids, ignore_window=ignore_window, report=report).result()

    def submit_ids(
        self,
        ids: Sequence[int],
        *,
        ignore_window: bool = False,
        report: SendReport | None = None,
    ) -> Future[SendReport]:
        """``send_ids`` without waiting: the rows are held or claimed here, then sent on the
        shared loop alongside this process's other batches; the future holds the report once
        every outcome is written (``report``, if given, is where they are counted: the caller
        may read it while the batch runs).

        Every text is for the organization's local today by the process clock (R3), whatever
        day its row was planned on; ``ignore_window`` also releases texts held for the window.
        """
        report = report if report is not None else SendReport()
        now = self.clock()
        with self.engine.begin() as conn:
            org_of = dict(
                conn.execute(
                    select(Reminder.id, Reminder.org_id).where(
                        Reminder.id.in_(list(ids)), Reminder.status == "pending"
                    )
                ).all()
            )
            orgs = load_orgs(conn, set(org_of.values()))
            sendable, held = self._split_by_window(org_of, orgs, now, ignore_window)
            for org_id, rids in held.items():
                org = orgs[org_id]
                opens = planning.next_window_open(now, org.timezone, org.window)
                report.held += ledger.hold_until(conn, rids, until=opens, now=now)
                report.note_held(org.slug, opens)
                log.info(
                    "held %d texts of %s until the send window opens at %s",
                    len(rids),
                    org.slug,
                    opens.isoformat(),
                )
            won = ledger.claim(conn, sendable, now=now, release_held=ignore_window)
        report.lost += len(sendable) - len(won)
        if not won:
            return self._open_batch(report, 0).future
        with self.engine.begin() as conn:
            rows = ledger.load_claimed(conn, won)
            book = TemplateBook(conn, orgs)
            ready, settled = self._prepare(conn, rows, orgs, book, ignore_window)
        self._admit(ready)
        batch = self._open_batch(report, len(ready) + len(settled))
        for outcome in settled:
            batch.put(outcome)
        if ready:
            running = shared_loop().submit(self._send_batch(ready, batch))
            running.add_done_callback(batch.check_running)
        return batch.future

    def _admit(self, ready: list[Ready]) -> None:
        """Wait until this process can take these texts: fewer than SMS_OPEN_BATCHES batches
        open, and none of their senders with more than ADMIT_AHEAD seconds of its slots still
        queued here. A batch for other senders starts at once; one for the same senders starts
        as the earlier one's texts go out, instead of queueing past the rate-wait deadline."""
        wanted: dict[str, int] = {}
        ahead: dict[str, float] = {}
        for item in ready:
            wanted[item.key] = wanted.get(item.key, 0) + 1
            ahead[item.key] = item.rate * ADMIT_AHEAD

        def room() -> bool:
            return self._open < self.settings.open_batches and all(
                self._backlog.get(key, 0) < limit for key, limit in ahead.items()
            )

        with self._open_changed:
            if not self._open_changed.wait_for(room, ADMIT_TIMEOUT):
                log.warning("no room for a send batch after %d s; taking it anyway", ADMIT_TIMEOUT)
            for key, n in wanted.items():
                self._backlog[key] = self._backlog.get(key, 0) + n
            self._ahead.update(ahead)

    def _dispatched(self, key: str, n: int) -> None:
        """From the loop: ``n`` texts of ``key`` left the queue (sent, or handed back)."""
        if not n:
            return
        with self._open_changed:
            before = self._backlog[key]
            left = before - n
            if left:
                self._backlog[key] = left
            else:
                del self._backlog[key]
            limit = self._ahead.get(key, 0.0)
            if left == 0 or before >= limit > left:
                self._open_changed.notify_all()

    def _open_batch(self, report: SendReport, total: int) -> _Batch:
        batch = _Batch(self, report, total)
        if total:
            with self._open_changed:
                self._open += 1
                if self._writer is None or not self._writer.is_alive():
                    self._writer = threading.Thread(
                        target=self._write_loop, name="sms-outcomes", daemon=True
                    )
                    self._writer.start()
        else:
            batch.future.set_result(report)
        return batch

    def _closed_batch(self) -> None:
        with self._open_changed:
            self._open -= 1
            self._open_changed.notify_all()

    def _write_loop(self) -> None:
        """The writer thread: outcomes of every open batch, written in groups as they arrive."""
        buffer: list[tuple[_Batch, Outcome]] = []
        first_buffered = 0.0
        while True:
            wait = max(FLUSH_SECONDS - (monotonic() - first_buffered), 0.0) if buffer else None
            try:
                item = self._outcomes.get(timeout=wait)
            except Empty:
                pass
            else:
                if item is _STOP:
                    if buffer:
                        self._write_group(buffer)
                    return
                assert isinstance(item, tuple)
                if not buffer:
                    first_buffered = monotonic()
                buffer.append(item)
            if buffer and (
                len(buffer) >= FLUSH_ROWS or monotonic() - first_buffered >= FLUSH_SECONDS
            ):
                self._write_group(buffer)
                buffer = []

    def _write_group(self, items: list[tuple[_Batch, Outcome]]) -> None:
        by_batch: dict[int, tuple[_Batch, list[Outcome]]] = {}
        for batch, outcome in items:
            by_batch.setdefault(id(batch), (batch, []))[1].append(outcome)
        try:
            tallies = self._write([o for _, o in items])
        except Exception as exc:  # the rows stay in sending: the sweeper's job
            log.exception("could not record %d outcomes; the sweeper will settle them", len(items))
            for batch, outcomes in by_batch.values():
                batch.fail(exc, len(outcomes))
            return
        for batch, outcomes in by_batch.values():
            for outcome in outcomes:
                tallies(batch.report, outcome)
            batch.written_more(len(outcomes))

    @staticmethod
    def _split_by_window(
        org_of: dict[int, int], orgs: dict[int, OrgConfig], now: datetime, ignore_window: bool
    ) -> tuple[list[int], dict[int, list[int]]]:
        sendable: list[int] = []
        held: dict[int, list[int]] = {}
        for rid, org_id in org_of.items():
            org = orgs.get(org_id)
            if org is None:
                continue  # organization deactivated: leave its rows alone
            if ignore_window or planning.in_send_window(now, org.timezone, org.window):
                sendable.append(rid)
            else:
                held.setdefault(org_id, []).append(rid)
        return sendable, held

    def _prepare(
        self,
        conn: Connection,
        rows: list[ledger.ClaimedRow],
        orgs: dict[int, OrgConfig],
        book: TemplateBook,
        ignore_window: bool,
    ) -> tuple[list[Ready], list[Outcome]]:
        """Re-check each row and render what is still due: texts to send, and outcomes now."""
        ready: list[Ready] = []
        settled: list[Outcome] = []
        now = self.clock()
        for row in rows:
            org = orgs[row.org_id]
            try:
                today = planning.local_date(now, org.timezone)
                item = self._prepare_one(conn, row, org, book, today, now, ignore_window)
            except Exception:
                # Nothing was sent: the row goes back for another attempt, loudly.
                log.exception("unexpected error preparing ledger row %d of %s", row.id, org.slug)
                item = Outcome(
                    row,
                    org,
                    "pending",
                    {
                        "reason": "retrying",
                        "error_code": "internal",
                        "error_message": "unexpected error before sending; see the worker log",
                        "next_attempt_at": now
                        + timedelta(seconds=self.settings.retry_backoff_seconds),
                    },
                )
            if isinstance(item, Outcome):
                settled.append(item)
            else:
                ready.append(item)
        return ready, settled

    def _prepare_one(
        self,
        conn: Connection,
        row: ledger.ClaimedRow,
        org: OrgConfig,
        book: TemplateBook,
        today: date,
        now: datetime,
        ignore_window: bool,
    ) -> Ready | Outcome:
        decision = rules.decide(
            rules.RowFacts(
                expires_on=row.expires_on,
                sub_expires_on=row.sub_expires_on,
                sub_active=row.sub_status == "active",
                phone_valid=row.phone_e164 is not None,
                opted_out=row.opted_out,
                nearest_sent=row.nearest_sent,
            ),
            today=today,
            leads=org.leads,
        )
        if (
            isinstance(decision, rules.Send)
            and (decision.lead, decision.days_left) != (row.lead_days, row.days_left)
            and not ledger.rekey(
                conn, row.id, lead=decision.lead, days_left=decision.days_left, now=now
            )
        ):
            decision = rules.superseded_by(decision.lead)
        if isinstance(decision, rules.Skip):
            return Outcome(row, org, "skipped", {"reason": decision.reason})
        days_left, lead = decision.days_left, decision.lead
        body = row.body
        text: dict[str, Any] = {}
        if body is None or (days_left, lead) != (row.days_left, row.lead_days):
            # A text held or retried into a later day says the real days left, in the wording
            # of the lead it now belongs to; the ledger keeps what was actually sent.
            body, fallback = render_body(book, org, row, days_left=days_left, lead=lead)
            if fallback:
                log.warning(
                    "template of %s failed for ledger row %d (%s); sent in the built-in wording",
                    org.slug,
                    row.id,
                    fallback,
                )
            info = count_segments(body)
            text = {
                "body": body,
                "template_fallback": fallback,
                "days_left": days_left,
                "segments": info.segments,
                "encoding": info.encoding,
            }
        rate = (org.rate_per_second or self.settings.rate_per_second) * RATE_MARGIN
        return Ready(row, org, body, text, self.rate_key(org), rate, today, ignore_window)

    async def _send_batch(self, ready: list[Ready], done: _Batch) -> None:
        """Each sender's texts are paced by their own coroutine; at most SMS_CONCURRENCY texts
        of this process (all its batches) wait for the provider's answer at once."""
        if self._inflight is None:
            self._inflight = asyncio.Semaphore(self.settings.send_concurrency)
        inflight = self._inflight
        sends: set[asyncio.Task[None]] = set()
        by_key: dict[str, list[Ready]] = {}
        for item in ready:
            by_key.setdefault(item.key, []).append(item)
        await asyncio.gather(
            *(self._pace(key, items, inflight, sends, done) for key, items in by_key.items())
        )
        while sends:
            await asyncio.gather(*list(sends))

    async def _pace(
        self,
        key: str,
        items: list[Ready],
        inflight: asyncio.Semaphore,
        sends: set[asyncio.Task[None]],
        done: _Batch,
    ) -> None:
        """Send one sender's texts in order, each at a slot of the shared limiter.

        Slots are booked a few at a time, just ahead of use: every process sending for this
        sender takes its turn on the same timeline, so they all send at once instead of one
        booking a long run that the others must wait out. A slot missed by more than the
        tolerance (a stalled process) is given up and fresh ones booked, so late texts never
        bunch up on a sender. What would wait more than MAX_RATE_WAIT in all for the sender's
        slots goes back to the ledger; waiting for this process's own capacity does not count.
        """
        loop = asyncio.get_running_loop()
        rate = items[0].rate
        lane = _Lane(deque(items))
        queue = lane.queue
        chunk = max(1, int(rate * BOOK_AHEAD))
        rate_waited = 0.0
        while queue or lane.starting:
            if not queue:
                # Texts let go may still come back: late by the time their task ran.
                lane.wake.clear()
                await lane.wake.wait()
                continue
            left = self.max_rate_wait - rate_waited
            first, granted, spacing, asked, answered = 0.0, 0, 0.0, 0.0, 0.0
            if left > 0:
                try:
                    asked, answered, (first, granted, spacing) = await self._book(
                        key, rate, min(chunk, len(queue)), left
                    )
                except Exception as exc:  # noqa: BLE001 - nothing was sent: a retry is safe
                    log.warning("rate limiter failed for %s: %r", key, exc)
                    for item in queue:
                        done.put(self._no_slot(item))
                    self._dispatched(key, len(queue))
                    queue.clear()
                    continue
            if not granted:
                until = self.clock() + timedelta(seconds=max(first, 1.0))
                log.info(
                    "rate limit of %s: %d texts wait until %s", key, len(queue), until.isoformat()
                )
                for item in queue:
                    done.put(Outcome(item.row, item.org, "deferred", {"next_attempt_at": until}))
                self._dispatched(key, len(queue))
                queue.clear()
                continue  # until the texts let go have all started (some may come back)
            for i in range(min(granted, len(queue))):
                # The limiter's clock read the slot between asking and reading the answer: go no
                # earlier than the latest it can be, and no later than the earliest allows.
                at = answered + first + i * spacing
                now = monotonic()
                if now < at:
                    rate_waited += at - now
                while now < at:
                    await asyncio.sleep(at - now)
                    now = monotonic()
                slot = asked + first + i * spacing
                if spacing and now - slot > LATE_TOLERANCE:
                    continue  # this slot has passed: the text takes the next one
                # A permit only once the slot has come: texts waiting for their slots hold
                # none, so they never keep another sender's due text waiting past its own.
                await inflight.acquire()
                if spacing and monotonic() - slot > LATE_TOLERANCE:
                    inflight.release()
                    continue
                lane.starting += 1
                task = loop.create_task(
                    self._send_one(
                        queue.popleft(), (slot if spacing else None), lane, inflight, done
                    )
                )
                sends.add(task)
                task.add_done_callback(sends.discard)

    async def _book(
        self, key: str, rate: float, count: int, max_wait: float
    ) -> tuple[float, float, tuple[float, int, float]]:
        """Book slots: (our clock when asking, when the answer was read, the booking)."""
        asked = monotonic()
        reserve_async = getattr(self.limiter, "reserve_async", None)
        if reserve_async is not None:
            # Its wait is exact from when it returns (it reads the limiter's own clock).
            booked: tuple[float, int, float] = await reserve_async(key, rate, count, max_wait)
            now = monotonic()
            return now, now, booked
        booked = await asyncio.get_running_loop().run_in_executor(
            self._pool, self.limiter.reserve, key, rate, count, max_wait
        )
        return asked, monotonic(), booked

    def _no_slot(self, item: Ready) -> Outcome:
        return Outcome(
            item.row,
            item.org,
            "pending",
            {
                "reason": "retrying",
                "error_code": "rate_limited",
                "error_message": "no rate-limit slot for this sender in time",
                "next_attempt_at": self.clock() + timedelta(seconds=1),
            },
        )

    # --- one text ---------------------------------------------------------------------------

    async def _send_one(
        self,
        item: Ready,
        slot: float | None,
        lane: _Lane,
        inflight: asyncio.Semaphore,
        done: _Batch,
    ) -> None:
        lane.starting -= 1
        lane.wake.set()
        if slot is not None and monotonic() - slot > LATE_TOLERANCE:
            # Let go in time, but the loop ran this too late: the slot is gone, book another.
            lane.queue.appendleft(item)
            inflight.release()
            return
        self._dispatched(item.key, 1)
        try:
            outcome = await self._deliver(item)
        except Exception:
            log.exception(
                "unexpected error sending ledger row %d of %s", item.row.id, item.org.slug
            )
            outcome = Outcome(
                item.row,
                item.org,
                "unknown",
                {
                    "reason": "outcome_unknown",
                    "error_code": "internal",
                    "error_message": "unexpected error while sending; see the worker log",
                },
            )
        finally:
            inflight.release()
        done.put(outcome)

    @staticmethod
    def _still_true(item: Ready, now: datetime) -> Outcome | None:
        """Checked just before the request (a text may wait seconds for its slot): it goes only
        on the local date it was made for (R3) and inside its window (R4); else it goes back."""
        org = item.org
        local = planning.local_now(now, org.timezone)
        if local.date() != item.today:
            return Outcome(item.row, org, "deferred", {"next_attempt_at": now})
        if not item.ignore_window and not planning.in_window(local.time(), org.window):
            opens = planning.next_window_open(now, org.timezone, org.window)
            return Outcome(item.row, org, "held", {"next_attempt_at": opens})
        return None

    @staticmethod
    def _valid_for(item: Ready, now: datetime) -> int | None:
        """How long the provider may queue this text: until its window closes (R4)."""
        if item.ignore_window:
            return None
        left = planning.window_closes_in(now, item.org.timezone, item.org.window)
        return None if left is None else max(1, int(left))

    async def _deliver(self, item: Ready) -> Outcome:
        row, org, text = item.row, item.org, item.text
        assert row.phone_e164 is not None
        now = self.clock()
        back = self._still_true(item, now)
        if back is not None:
            return back
        valid_for = self._valid_for(item, now)
        try:
            if self._send_async is not None:
                message_id = await self._send_async(
                    row.phone_e164, item.body, org.sender, valid_for=valid_for
                )
            else:
                send = functools.partial(self.provider.send, valid_for=valid_for)
                message_id = await asyncio.get_running_loop().run_in_executor(
                    self._pool, send, row.phone_e164, item.body, org.sender
                )
        except TransientError as exc:
            return self._retry_or_fail(row, org, exc, text)
        except PermanentError as exc:
            reason = "opted_out" if exc.opted_out else "rejected"
            values = {"reason": reason, "error_code": exc.code, "error_message": exc.message}
            return Outcome(row, org, "failed", {**values, **text}, opt_out=exc.opted_out)
        except UnknownOutcomeError as exc:
            values = {
                "reason": "outcome_unknown",
                "error_code": exc.code,
                "error_message": exc.message,
            }
            return Outcome(row, org, "unknown", {**values, **text})
        return Outcome(
            row,
            org,
            "sent",
            {"provider_message_id": message_id, "sent_at": self.clock(), **text},
        )

    def _retry_or_fail(
        self, row: ledger.ClaimedRow, org: OrgConfig, exc: TransientError, text: dict[str, Any]
    ) -> Outcome:
        values = {"error_code": exc.code, "error_message": exc.message}
        if row.attempts >= self.settings.max_attempts:
            return Outcome(row, org, "failed", {"reason": "retries_exhausted", **values, **text})
        delay = planning.retry_delay(
            row.attempts, self.settings.retry_backoff_seconds, retry_after=exc.retry_after
        )
        at = planning.clamp_to_window(
            self.clock() + timedelta(seconds=delay), org.timezone, org.window
        )
        return Outcome(row, org, "pending", {"reason": "retrying", "next_attempt_at": at, **values})

    # --- recording --------------------------------------------------------------------------

    def _write(self, outcomes: list[Outcome]) -> Callable[[SendReport, Outcome], None]:
        """One transaction for a group of outcomes; each row moves only out of ``sending``.
        Returns what adds one written outcome to its batch's report."""
        now = self.clock()
        by_status: dict[str, list[tuple[Outcome, dict[str, Any]]]] = {}
        # Rows not tried, by the reason they wait with and until when.
        put_back: dict[tuple[str, datetime], list[Outcome]] = {}
        for o in outcomes:
            if o.status in _PUT_BACK:
                key = (_PUT_BACK[o.status], o.values["next_attempt_at"])
                put_back.setdefault(key, []).append(o)
                continue
            if o.status == "sent" and o.values.keys() <= _SENT_COLUMNS:
                # The common case, written with a statement of three parameters a row.
                lean = {c: o.values[c] for c in _SENT_COLUMNS}
                by_status.setdefault(_SENT_AS_PLANNED, []).append((o, {"row_id": o.row.id, **lean}))
                continue
            row_params: dict[str, Any] = {c: o.values.get(c) for c in _OUTCOME_COLUMNS}
            row_params.update({f"set_{c}": c in o.values for c in _KEEP_UNLESS_SET})
            row_params["row_id"] = o.row.id
            by_status.setdefault(o.status, []).append((o, row_params))
        # What each outcome counts as; rows someone else moved first count as lost (which of a
        # group's rows they were is not known, only how many).
        counts_as = {id(o): "retrying" if o.status == "pending" else o.status for o in outcomes}
        with self.engine.begin() as conn:
            for o in outcomes:
                if o.opt_out and o.row.phone_e164:
                    ledger.add_opt_out(
                        conn,
                        org_id=o.org.id,
                        phone_e164=o.row.phone_e164,
                        source="provider",
                        now=now,
                    )
            moves = [
                (group, conn.execute(_outcome_update(status, now), [p for _, p in group]).rowcount)
                for status, group in by_status.items()
            ]
            moves += [
                (
                    [(o, {}) for o in group],
                    ledger.put_back(
                        conn, [o.row.id for o in group], until=until, reason=reason, now=now
                    ),
                )
                for (reason, until), group in put_back.items()
            ]
        for group, moved in moves:
            if moved is not None and 0 <= moved < len(group):
                log.warning("%d outcomes found their rows already moved", len(group) - moved)
                for o, _ in group[moved:]:
                    counts_as[id(o)] = "lost"
        for o in outcomes:
            if o.status != "deferred":
                _log_outcome(o)

        def tally(report: SendReport, o: Outcome) -> None:
            counter = counts_as[id(o)]
            setattr(report, counter, getattr(report, counter) + 1)
            if counter == "retrying":
                report.retry_at.append(o.values["next_attempt_at"])
            elif counter == "held":
                report.note_held(o.org.slug, o.values["next_attempt_at"])

        return tally


def _outcome_update(status: str, now: datetime) -> Any:
    if status == _SENT_AS_PLANNED:
        return (
            update(Reminder)
            .where(Reminder.id == bindparam("row_id"), Reminder.status == "sending")
            .values(
                status="sent",
                updated_at=now,
                reason=None,
                error_code=None,
                error_message=None,
                provider_message_id=bindparam("provider_message_id"),
                sent_at=bindparam("sent_at", type_=Reminder.__table__.c.sent_at.type),
            )
        )
    values: dict[str, Any] = {"status": status, "updated_at": now}
    for c in _OUTCOME_COLUMNS:
        if c in _KEEP_UNLESS_SET:
            values[c] = case(
                (bindparam(f"set_{c}"), bindparam(c, type_=Reminder.__table__.c[c].type)),
                else_=Reminder.__table__.c[c],
            )
        else:
            values[c] = bindparam(c, type_=Reminder.__table__.c[c].type)
    return (
        update(Reminder)
        .where(Reminder.id == bindparam("row_id"), Reminder.status == "sending")
        .values(values)
    )


def _log_outcome(o: Outcome) -> None:
    level = logging.WARNING if o.status in ("failed", "unknown") else logging.INFO
    code = o.values.get("error_code")
    reason = o.values.get("reason")
    log.log(
        level,
        "text %s org=%s id=%d to=%s attempt=%d%s%s",
        "retry scheduled" if o.status == "pending" else o.status,
        o.org.slug,
        o.row.id,
        mask_phone(o.row.phone_e164 or o.row.phone),
        o.row.attempts,
        f" code={code}" if code else "",
        f" reason={reason}" if reason else "",
    )

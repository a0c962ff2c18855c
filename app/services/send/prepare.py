"""Prepare a batch: hold what is outside its window, re-check the rest against the day's rules
(``app.domain.rules``), skip what must not go, render what must, and say which sender each
text takes. Nothing is claimed here: a row is claimed just before its request (``claims``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import Connection

from app.aioloop import yield_to_loop
from app.db import ledger
from app.domain import planning, rules
from app.domain.segments import count_segments
from app.domain.templates import TemplateRefused
from app.services.engine import TEMPLATE_REFUSED, OrgConfig, TemplateBook, load_orgs, render_body

log = logging.getLogger("app.engine")

YIELD_EVERY = 16  # texts rendered between two of yield_to_loop


@dataclass
class Text:
    """A row still due, with the text its request will carry, waiting for its sender's slot."""

    row: ledger.TextRow
    org: OrgConfig
    body: str
    segments: int  # the slots it takes of its sender's rate
    changes: ledger.TextColumns | None  # what its claim writes; None: the stored text goes
    key: str  # the rate-limit key of its sender
    rate: float  # segments per second its sender's slots are booked at
    today: date  # the organization's local date it was made for (R3)
    ignore_window: bool  # this run was given --ignore-window (R4)


@dataclass
class Prepared:
    texts: list[Text] = field(default_factory=list)
    held: dict[str, tuple[int, datetime]] = field(default_factory=dict)  # slug -> (n, opens)
    skipped: int = 0
    failed: int = 0  # its organization's template went past a bound: it cannot be made
    deferred: int = 0  # could not be prepared (an unexpected error): tried again later
    gone: int = 0  # no longer pending (someone else took it)


def pending_orgs(
    conn: Connection, ids: Sequence[int]
) -> tuple[dict[int, int], dict[int, OrgConfig]]:
    """{row id: organization id} of the rows still pending, and those active organizations."""
    org_of = ledger.pending_org_ids(conn, ids)
    orgs = load_orgs(conn, set(org_of.values()))
    # An organization deactivated meanwhile: its rows are left alone.
    return {rid: oid for rid, oid in org_of.items() if oid in orgs}, orgs


def prepare(
    conn: Connection,
    org_of: dict[int, int],
    orgs: dict[int, OrgConfig],
    *,
    now: datetime,
    ignore_window: bool,
    sender_of: Callable[[OrgConfig], tuple[str, float]],
    retry_backoff: float,
) -> Prepared:
    """Hold, skip and render, in the caller's transaction. ``sender_of`` gives an
    organization's rate-limit key and its rate in segments per second."""
    done = Prepared()
    sendable: list[int] = []
    held: dict[int, list[int]] = {}
    for rid, org_id in org_of.items():
        org = orgs[org_id]
        if ignore_window or planning.in_send_window(now, org.timezone, org.window):
            sendable.append(rid)
        else:
            held.setdefault(org_id, []).append(rid)
    for org_id, rids in held.items():
        org = orgs[org_id]
        opens = planning.next_window_open(now, org.timezone, org.window)
        n = ledger.wait(conn, rids, until=opens, reason=ledger.HELD, now=now)
        done.held[org.slug] = (n, opens)
        log.info(
            "held %d texts of %s until the send window opens at %s",
            n,
            org.slug,
            opens.isoformat(),
        )
    rows = ledger.load_pending(conn, sendable)
    done.gone = len(sendable) - len(rows)
    book = TemplateBook(conn, orgs)
    skips: dict[int, str] = {}
    refused: dict[int, str] = {}
    broken: list[int] = []
    for i, row in enumerate(rows):
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            yield_to_loop()
        org = orgs[row.org_id]
        try:
            made = _text(conn, row, org, book, now, ignore_window, sender_of)
        except TemplateRefused as exc:
            # The organization's template is at fault, not this customer: the text fails,
            # in no other wording (README: "Templates cannot hurt the service").
            log.warning("template of %s refused for ledger row %d: %s", org.slug, row.id, exc)
            refused[row.id] = str(exc)
            continue
        except Exception:
            # Nothing was sent: the row is tried again later, loudly.
            log.exception("unexpected error preparing ledger row %d of %s", row.id, org.slug)
            broken.append(row.id)
            continue
        if isinstance(made, rules.Skip):
            skips[row.id] = made.reason
        else:
            done.texts.append(made)
    done.skipped = ledger.skip(conn, skips, now=now)
    done.failed = ledger.fail_unsent(conn, refused, reason=TEMPLATE_REFUSED, now=now)
    until = now + timedelta(seconds=max(retry_backoff, 1.0))
    done.deferred = ledger.wait(conn, broken, until=until, reason=ledger.DEFERRED, now=now)
    return done


def _text(
    conn: Connection,
    row: ledger.TextRow,
    org: OrgConfig,
    book: TemplateBook,
    now: datetime,
    ignore_window: bool,
    sender_of: Callable[[OrgConfig], tuple[str, float]],
) -> Text | rules.Skip:
    today = planning.local_date(now, org.timezone)
    decision = rules.decide(
        rules.RowFacts(
            expires_on=row.expires_on,
            sub_expires_on=row.sub_expires_on,
            sub_active=row.sub_status == "active",
            phone_valid=row.phone_e164 is not None,
            opted_out=row.opted_out,
            nearest_sent=row.nearest_sent,
            undeliverable=row.undeliverable,
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
        return decision
    key, rate = sender_of(org)
    body, segments = row.body, row.segments
    changes = None
    rerender = body is None or (decision.days_left, decision.lead) != (
        row.days_left,
        row.lead_days,
    )
    fallback = None
    if rerender:
        # A text held or retried into a later day says the real days left, in the wording of
        # the lead it now belongs to. Its claim writes it: the row always says what was asked.
        body, fallback = render_body(
            book, org, row, days_left=decision.days_left, lead=decision.lead
        )
        if fallback:
            log.warning(
                "template of %s failed for ledger row %d (%s); sent in the built-in wording",
                org.slug,
                row.id,
                fallback,
            )
    assert body is not None
    if rerender or org.sender != row.sender:
        info = count_segments(body)
        segments = info.segments
        changes = ledger.TextColumns(
            body=body,
            sender=org.sender,
            days_left=decision.days_left,
            segments=info.segments,
            encoding=info.encoding,
            template_fallback=fallback,
        )
    if segments is None:
        segments = count_segments(body).segments
    return Text(row, org, body, segments, changes, key, rate, today, ignore_window)

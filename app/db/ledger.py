"""The ledger's one owner: every change of a reminder row's status is a function here.

Planning inserts rows (app.db.plan); from then on a row moves only through this module: held
for its window, deferred, skipped, handed to the broker, claimed for an attempt, its outcome
recorded, released by the sweeper, settled by reconciliation, updated by a delivery receipt.
Every change is one conditional UPDATE naming the state it expects (and, for an attempt's
outcome, the attempt), so two workers, a redelivered task or a late answer racing for the same
row cannot both act on it: the database decides the winner.

A row's life: ``pending`` → (claim) ``sending`` → ``sent`` | ``failed`` | ``unknown`` |
back to ``pending`` (a retry, or a text that was claimed but not tried); ``pending`` →
``skipped`` when the rules say it must not go; ``pending`` → ``failed`` when its template
went past a bound; ``unknown`` → ``sent`` | ``pending`` by
reconciliation; ``sent`` → ``pending`` when the provider's queue dropped it (30036);
``skipped`` (undeliverable) → ``pending`` when the customer's number changes that day. The
outcomes of an attempt are typed values (``Sent``, ``Retry`` …): which columns each writes is
in its type.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Connection,
    and_,
    any_,
    bindparam,
    delete,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from app.db import early_receipts, outbox
from app.db.models import (
    Customer,
    OptOut,
    Organization,
    ProviderCircuit,
    Reminder,
    Subscription,
    UndeliverableNumber,
)
from app.db.undeliverable import REASON as UNDELIVERABLE
from app.db.undeliverable import mark_of_message
from app.domain import delivery, planning
from app.domain.events import RECEIPT_EVENTS, EventType
from app.domain.status import MAY_HAVE_SENT, Status

PENDING, SENDING, SENT = Status.PENDING, Status.SENDING, Status.SENT
FAILED, SKIPPED, UNKNOWN = Status.FAILED, Status.SKIPPED, Status.UNKNOWN


def is_due(now: datetime) -> Any:
    """WHERE clause: the row's next attempt is due at ``now`` (or was never put off)."""
    return or_(Reminder.next_attempt_at.is_(None), Reminder.next_attempt_at <= now)


HELD = "held"  # the reason of a pending row waiting for its window to open
DEFERRED = "deferred"  # ... of one put back for a later rate-limit slot (or a new local day)


def is_sendable(now: datetime, *, release_held: bool = False) -> Any:
    """WHERE clause: due at ``now``; with ``release_held`` (``--ignore-window``) also the rows
    held for the window, whenever it opens."""
    due = is_due(now)
    return or_(due, Reminder.reason == HELD) if release_held else due


def due_ids(
    conn: Connection,
    *,
    now: datetime,
    org_ids: Iterable[int] | None = None,
    limit: int = 1000,
    after_id: int = 0,
    release_held: bool = False,
    reason: str | None = None,
) -> list[int]:
    """Pending rows whose next attempt is due (with this reason), oldest id first."""
    stmt = (
        select(Reminder.id)
        .where(
            Reminder.status == PENDING,
            is_sendable(now, release_held=release_held),
            Reminder.id > after_id,
        )
        .order_by(Reminder.id)
        .limit(limit)
    )
    if org_ids is not None:
        stmt = stmt.where(Reminder.org_id.in_(list(org_ids)))
    if reason is not None:
        stmt = stmt.where(Reminder.reason == reason)
    return list(conn.execute(stmt).scalars())


def next_attempt(conn: Connection, *, org_ids: Iterable[int], reason: str) -> datetime | None:
    """When the first ``pending`` row of these organizations with this reason is due."""
    stmt = select(func.min(Reminder.next_attempt_at)).where(
        Reminder.status == PENDING,
        Reminder.reason == reason,
        Reminder.org_id.in_(list(org_ids)),
    )
    return conn.execute(stmt).scalar()


def held_until(conn: Connection) -> dict[int, datetime]:
    """Per organization, when its held texts' window opens (the earliest)."""
    stmt = (
        select(Reminder.org_id, func.min(Reminder.next_attempt_at))
        .where(Reminder.status == PENDING, Reminder.reason == HELD)
        .group_by(Reminder.org_id)
    )
    return {org_id: at for org_id, at in conn.execute(stmt) if at is not None}


def count_due(
    conn: Connection, *, now: datetime, org_ids: Iterable[int], release_held: bool = False
) -> int:
    stmt = select(func.count()).where(
        Reminder.status == PENDING,
        is_sendable(now, release_held=release_held),
        Reminder.org_id.in_(list(org_ids)),
    )
    return int(conn.execute(stmt).scalar_one())


def requeue_expired(conn: Connection, sids: Sequence[str], *, now: datetime) -> int:
    """Texts the provider dropped from its queue unsent (Twilio's 30036: their validity period,
    the window's close, passed) wait for their organization's next opening instead of counting
    as sent."""
    if not sids:
        return 0
    found = conn.execute(
        select(
            Reminder.id,
            Reminder.provider_message_id,
            Organization.timezone,
            Organization.window_start,
            Organization.window_end,
        )
        .join(Organization, Organization.id == Reminder.org_id)
        .where(Reminder.provider_message_id.in_(list(sids)), Reminder.status == SENT)
    ).all()
    moved = 0
    for row_id, sid, tz, start, end in found:
        result = conn.execute(
            update(Reminder)
            .where(
                Reminder.id == row_id,
                Reminder.status == SENT,
                Reminder.provider_message_id == sid,
            )
            .values(
                status=PENDING,
                reason=HELD,
                next_attempt_at=planning.next_window_open(now, tz, (start, end)),
                provider_message_id=None,
                delivery_status=None,
                sent_at=None,
                error_code=delivery.EXPIRED_IN_QUEUE,
                error_message="expired in the provider's queue before the window closed; "
                "sent again when it opens",
                updated_at=now,
            )
        )
        moved += result.rowcount or 0
    return moved


# --- pending rows: wait, skip, take their true lead --------------------------------------


def wait(
    conn: Connection, ids: Sequence[int], *, until: datetime, reason: str, now: datetime
) -> int:
    """Pending rows that were not tried wait until ``until``: ``DEFERRED`` (no rate-limit slot
    soon enough, the provider's circuit open, or a new local day came before they left) or
    ``HELD`` (their window closed first). A deferred row counts as never handed over until it is
    due (see ``hand_over``), so the sweeper hands it over again then."""
    if not ids:
        return 0
    result = conn.execute(
        update(Reminder)
        .where(_id_among(conn, list(ids)), Reminder.status == PENDING)
        .values(
            next_attempt_at=until,
            reason=reason,
            updated_at=until if reason == DEFERRED else now,
        )
    )
    return result.rowcount or 0


def skip(conn: Connection, reasons: dict[int, str], *, now: datetime) -> int:
    """Pending rows the rules say must not go (cancelled, renewed, superseded …): ``skipped``."""
    moved: list[int] = []
    for reason, ids in _group(reasons).items():
        moved += conn.execute(
            update(Reminder)
            .where(Reminder.id.in_(ids), Reminder.status == PENDING)
            .values(status=SKIPPED, reason=reason, updated_at=now)
            .returning(Reminder.id)
        ).scalars()
    outbox.message_rows(conn, EventType.MESSAGE_SKIPPED, moved, now=now)
    return len(moved)


def fail_unsent(conn: Connection, problems: dict[int, str], *, reason: str, now: datetime) -> int:
    """Pending rows whose text cannot be made (their organization's template went past a
    bound): ``failed`` with ``reason``, the problem in ``error_message``; nothing was sent."""
    moved: list[int] = []
    for problem, ids in _group(problems).items():
        moved += conn.execute(
            update(Reminder)
            .where(Reminder.id.in_(ids), Reminder.status == PENDING)
            .values(status=FAILED, reason=reason, error_message=problem, updated_at=now)
            .returning(Reminder.id)
        ).scalars()
    outbox.message_rows(conn, EventType.MESSAGE_FAILED, moved, now=now)
    return len(moved)


def rekey(conn: Connection, row_id: int, *, lead: int, days_left: int, now: datetime) -> bool:
    """A pending row takes the lead and count of the day it is really sent on (R3).

    The ledger's unique key (subscription, expiry, lead) decides: when another row already
    holds that lead, this one cannot take it (False) and must not be sent (R1). A savepoint
    keeps the caller's transaction usable after the refused UPDATE.
    """
    try:
        with conn.begin_nested():
            result = conn.execute(
                update(Reminder)
                .where(Reminder.id == row_id, Reminder.status == PENDING)
                .values(lead_days=lead, days_left=days_left, updated_at=now)
            )
    except IntegrityError:
        return False
    return bool(result.rowcount)


def _group(by_row: dict[int, str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for row_id, key in by_row.items():
        groups.setdefault(key, []).append(row_id)
    return groups


# --- handing rows to the broker -----------------------------------------------------------


def no_message(lost_before: datetime | None = None) -> Any:
    """WHERE clause: rows with no message in the broker. ``updated_at`` is the mark of "a
    message for this row was handed to the broker": a due row whose ``updated_at`` is not after
    its ``next_attempt_at`` (a retry, a hold, a deferral) has none yet; with ``lost_before``
    (the sweeper), one handed over before it counts as lost with its message."""
    never = or_(Reminder.next_attempt_at.is_(None), Reminder.updated_at <= Reminder.next_attempt_at)
    return never if lost_before is None else or_(never, Reminder.updated_at <= lost_before)


def hand_over(
    conn: Connection, ids: Sequence[int], *, now: datetime, lost_before: datetime | None = None
) -> list[int]:
    """Mark these rows as handed to the broker if they are still due, ``pending`` and without a
    message; return those, in the order given.

    The conditions are checked again on each row as it is locked, so when two callers (two
    sweepers, a sweeper and a daily run) hand over the same rows, only the first takes them.
    Rows planned by the daily run are inserted already marked (app.db.plan), so a day's first
    hand-over writes nothing.
    """
    if not ids:
        return []
    stmt = (
        update(Reminder)
        .where(
            _id_among(conn, list(ids)),
            Reminder.status == PENDING,
            is_due(now),
            no_message(lost_before),
        )
        .values(updated_at=now)
        .returning(Reminder.id)
    )
    marked = set(conn.execute(stmt).scalars())
    return [i for i in ids if i in marked]


# --- the claim --------------------------------------------------------------------------------


def claim(
    conn: Connection, ids: Sequence[int], *, now: datetime, release_held: bool = False
) -> list[int]:
    """ONE conditional UPDATE pending → sending for rows sent as planned (their stored body and
    sender are what goes). Returns the ids this caller won."""
    return sorted(claim_texts(conn, [Claim(i, release_held) for i in ids], now=now))


@dataclass(frozen=True)
class TextColumns:
    """What an attempt fixes on its row when the text differs from the stored one: the body
    and sender reconciliation will look for, and what the body says."""

    body: str
    sender: str | None
    days_left: int
    segments: int
    encoding: str
    template_fallback: str | None


@dataclass(frozen=True)
class Claim:
    row_id: int
    release_held: bool = False  # --ignore-window: a row held for the window may go
    text: TextColumns | None = None  # None: the stored body and sender go as they are


def claim_texts(conn: Connection, claims: Sequence[Claim], *, now: datetime) -> dict[int, int]:
    """Claim rows just before their requests: pending → sending, the attempt counted, and the
    attempt's body and sender written with it, so whatever happens next, the row says what was
    asked of the provider. Returns {row id: its attempt number} for the rows this caller won;
    a row someone else claimed first, or no longer due, is not among them."""
    won: dict[int, int] = {}
    plain: dict[bool, list[int]] = {}
    rich: dict[bool, list[Claim]] = {}
    for c in claims:
        if c.text is None:
            plain.setdefault(c.release_held, []).append(c.row_id)
        else:
            rich.setdefault(c.release_held, []).append(c)
    for release_held, ids in plain.items():
        won.update(conn.execute(_claim_stmt(conn, ids, now, release_held)).all())
    for release_held, group in rich.items():
        won.update(_claim_with_text(conn, group, now=now, release_held=release_held))
    return won


_TEXT_COLUMNS = tuple(f.name for f in fields(TextColumns))


def _claim_with_text(
    conn: Connection, claims: list[Claim], *, now: datetime, release_held: bool
) -> dict[int, int]:
    """The claim of rows whose text is written with it: one UPDATE … FROM (VALUES …) on
    PostgreSQL, a statement a row elsewhere (SQLite, the embedded default)."""
    if conn.dialect.name != "postgresql":
        won: dict[int, int] = {}
        for c in claims:
            assert c.text is not None
            stmt = _claim_stmt(conn, [c.row_id], now, release_held).values(asdict(c.text))
            won.update(conn.execute(stmt).all())
        return won
    rows = [c for c in claims if c.text is not None]
    params: dict[str, Any] = {
        "now": now,
        "release_held": release_held,
        "row_ids": [c.row_id for c in rows],
        **{name: [getattr(c.text, name) for c in rows] for name in _TEXT_COLUMNS},
    }
    return dict(conn.execute(_CLAIM_WITH_TEXT, params).all())


_TEXT_TYPES = {
    "body": "TEXT",
    "sender": "TEXT",
    "days_left": "INTEGER",
    "segments": "INTEGER",
    "encoding": "TEXT",
    "template_fallback": "TEXT",
}
assert tuple(_TEXT_TYPES) == _TEXT_COLUMNS

# One statement, compiled once, for any number of rows: their texts as parallel arrays.
_CLAIM_WITH_TEXT = text(
    f"""
UPDATE reminders AS r
SET status = 'sending', attempts = r.attempts + 1, claimed_at = :now, updated_at = :now,
    {", ".join(f"{name} = g.{name}" for name in _TEXT_COLUMNS)}
FROM unnest(CAST(:row_ids AS BIGINT[]),
            {", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in _TEXT_TYPES.items())})
     AS g(row_id, {", ".join(_TEXT_COLUMNS)})
WHERE r.id = g.row_id AND r.status = 'pending'
  AND (r.next_attempt_at IS NULL OR r.next_attempt_at <= :now
       OR (:release_held AND r.reason = '{HELD}'))
RETURNING r.id, r.attempts
"""
).bindparams(bindparam("now", type_=Reminder.__table__.c.updated_at.type))


def _claim_stmt(conn: Connection, ids: list[int], now: datetime, release_held: bool) -> Any:
    return _claim_where(_id_among(conn, ids), now, release_held)


def _claim_where(rows: Any, now: datetime, release_held: bool) -> Any:
    """pending → sending for ``rows`` still due, the attempt counted; RETURNING (id, attempt)."""
    return (
        update(Reminder)
        .where(rows, Reminder.status == PENDING, is_sendable(now, release_held=release_held))
        .values(
            status=SENDING,
            attempts=Reminder.attempts + 1,
            claimed_at=now,
            updated_at=now,
        )
        .returning(Reminder.id, Reminder.attempts)
    )


# --- an attempt's outcome ---------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """The provider accepted the text: its message id. Clears any earlier error."""

    row_id: int
    attempt: int
    message_id: str
    sent_at: datetime


@dataclass(frozen=True)
class Retry:
    """A transient failure that counts: back to ``pending`` for another attempt at ``at``."""

    row_id: int
    attempt: int
    at: datetime
    code: str | None
    message: str


@dataclass(frozen=True)
class Failed:
    """Refused for good (``rejected``, ``opted_out``) or out of retries (``retries_exhausted``)."""

    row_id: int
    attempt: int
    reason: str
    code: str | None
    message: str


@dataclass(frozen=True)
class Unknown:
    """The provider may have accepted it (a timeout): reconciliation asks."""

    row_id: int
    attempt: int
    code: str | None
    message: str


@dataclass(frozen=True)
class PutBack:
    """Claimed but not tried, or tried while the provider failed for everyone: back to
    ``pending`` until ``until`` with the attempt given back (``DEFERRED`` or ``HELD``);
    ``code``/``message`` say why when there was an error."""

    row_id: int
    attempt: int
    until: datetime
    reason: str
    code: str | None = None
    message: str | None = None


Outcome = Sent | Retry | Failed | Unknown | PutBack

_ROW: Any = bindparam("row_id")
_ATTEMPT: Any = bindparam("attempt")


def _of_attempt() -> Any:
    """WHERE clause of an outcome: the row is still in the attempt that made it."""
    return and_(Reminder.id == _ROW, Reminder.status == SENDING, Reminder.attempts == _ATTEMPT)


def _col(name: str) -> Any:
    return bindparam(name, type_=Reminder.__table__.c[name].type)


def _outcome(**values: Any) -> Any:
    """An outcome's UPDATE: the row, still in the attempt that made it, takes ``values``."""
    return update(Reminder).where(_of_attempt()).values(updated_at=_col("updated_at"), **values)


_ERROR = {"error_code": _col("error_code"), "error_message": _col("error_message")}
_OUTCOME_SQL: dict[type, Any] = {
    Sent: _outcome(
        status=SENT,
        provider_message_id=_col("provider_message_id"),
        sent_at=_col("sent_at"),
        reason=None,
        error_code=None,
        error_message=None,
    ),
    Retry: _outcome(
        status=PENDING, reason="retrying", next_attempt_at=_col("next_attempt_at"), **_ERROR
    ),
    Failed: _outcome(status=FAILED, reason=_col("reason"), **_ERROR),
    Unknown: _outcome(status=UNKNOWN, reason="outcome_unknown", **_ERROR),
    PutBack: _outcome(
        status=PENDING,
        attempts=Reminder.attempts - 1,
        claimed_at=None,
        next_attempt_at=_col("next_attempt_at"),
        reason=_col("reason"),
        error_code=func.coalesce(_col("error_code"), Reminder.error_code),
        error_message=func.coalesce(_col("error_message"), Reminder.error_message),
    ),
}


def _params(o: Outcome, now: datetime) -> dict[str, Any]:
    p: dict[str, Any] = {"row_id": o.row_id, "attempt": o.attempt, "updated_at": now}
    match o:
        case Sent():
            p.update(provider_message_id=o.message_id, sent_at=o.sent_at)
        case Retry():
            p.update(next_attempt_at=o.at, error_code=o.code, error_message=o.message)
        case Failed():
            p.update(reason=o.reason, error_code=o.code, error_message=o.message)
        case Unknown():
            p.update(error_code=o.code, error_message=o.message)
        case PutBack():
            p.update(next_attempt_at=o.until, reason=o.reason, error_code=o.code)
            p["error_message"] = o.message
            # A deferred row counts as never handed over until it is due (see hand_over).
            if o.reason == DEFERRED:
                p["updated_at"] = o.until
    return p


def record(conn: Connection, outcomes: Sequence[Outcome], *, now: datetime) -> dict[type, int]:
    """Write outcomes, one statement per kind; returns how many rows each kind moved (an
    outcome whose row is no longer in that attempt moves nothing: someone settled it first).
    Texts sent or failed are told as events; the texts sent take the status callbacks that
    came before their message ids."""
    by_kind: dict[type, list[Outcome]] = {}
    for o in outcomes:
        by_kind.setdefault(type(o), []).append(o)
    moved: dict[type, int] = {}
    for kind, group in by_kind.items():
        told = _TOLD.get(kind)
        if told is None:
            params_list = [_params(o, now) for o in group]
            moved[kind] = conn.execute(_OUTCOME_SQL[kind], params_list).rowcount or 0
            continue
        if kind is Sent and conn.dialect.name == "postgresql":
            # The common case, the whole group in one statement, which also says which rows'
            # organizations want the event: none (the usual case) costs no further statement.
            sent = cast(list[Sent], group)
            params = {
                "now": now,
                "row_ids": [o.row_id for o in sent],
                "attempts": [o.attempt for o in sent],
                "message_ids": [o.message_id for o in sent],
                "sent_ats": [o.sent_at for o in sent],
            }
            returned = conn.execute(_SENT_MANY, params).all()
            ids = [row_id for row_id, _ in returned]
            wanted = [row_id for row_id, wants in returned if wants]
        else:
            stmt = _OUTCOME_SQL[kind].returning(Reminder.id)
            ids = [i for o in group for i in conn.execute(stmt, _params(o, now)).scalars()]
            wanted = ids  # message_rows looks for endpoints itself
        moved[kind] = len(ids)
        outbox.message_rows(conn, told, wanted, now=now)
        if kind is Sent:
            apply_early_receipts(conn, [cast(Sent, o).message_id for o in group], now=now)
    return moved


#: The outcomes a host is told of, as which event.
_TOLD = {Sent: EventType.MESSAGE_SENT, Failed: EventType.MESSAGE_FAILED}


_SENT_MANY = text(
    f"""
UPDATE reminders AS r
SET status = '{SENT}', provider_message_id = g.message_id, sent_at = g.sent_at,
    reason = NULL, error_code = NULL, error_message = NULL, updated_at = :now
FROM unnest(CAST(:row_ids AS BIGINT[]), CAST(:attempts AS INTEGER[]),
            CAST(:message_ids AS TEXT[]), CAST(:sent_ats AS TIMESTAMPTZ[]))
     AS g(row_id, attempt, message_id, sent_at)
WHERE r.id = g.row_id AND r.status = '{SENDING}' AND r.attempts = g.attempt
RETURNING r.id, {outbox.wanted_sql(EventType.MESSAGE_SENT, org="r.org_id")}
"""
).bindparams(bindparam("now", type_=Reminder.__table__.c.updated_at.type))


# --- what a text is sent from -------------------------------------------------------------------


@dataclass(frozen=True)
class TextRow:
    """A pending ledger row with what the sender needs to re-check and send it."""

    id: int
    org_id: int
    subscription_id: int
    lead_days: int
    days_left: int
    expires_on: date
    phone: str | None
    sender: str | None
    body: str | None
    segments: int | None
    attempts: int
    sub_expires_on: date
    sub_status: str
    plan: str
    amount: Decimal | None
    currency: str | None
    customer_name: str
    phone_e164: str | None
    opted_out: bool
    nearest_sent: int | None  # fewest days left of this expiry's other texts that may be out
    undeliverable: bool  # the provider said this number cannot take texts


def pending_org_ids(conn: Connection, ids: Sequence[int]) -> dict[int, int]:
    """{row id: organization id} of those of ``ids`` still pending."""
    if not ids:
        return {}
    stmt = select(Reminder.id, Reminder.org_id).where(
        _id_among(conn, list(ids)), Reminder.status == PENDING
    )
    return {row_id: org_id for row_id, org_id in conn.execute(stmt)}


def load_pending(conn: Connection, ids: Sequence[int]) -> list[TextRow]:
    """The pending rows as they stand now, joined with today's subscription, customer and
    opt-out, and what else of the same expiry may have gone out."""
    if not ids:
        return []
    opted = (
        select(OptOut.id)
        .where(OptOut.org_id == Reminder.org_id, OptOut.phone_e164 == Customer.phone_e164)
        .exists()
    )
    marked = (
        select(UndeliverableNumber.id)
        .where(
            UndeliverableNumber.org_id == Reminder.org_id,
            UndeliverableNumber.phone_e164 == Customer.phone_e164,
        )
        .exists()
    )
    other = aliased(Reminder)
    nearest_sent = (
        select(func.min(other.days_left))
        .where(
            and_(
                other.subscription_id == Reminder.subscription_id,
                other.expires_on == Reminder.expires_on,
                other.id != Reminder.id,
                other.status.in_(sorted(MAY_HAVE_SENT)),
            )
        )
        .scalar_subquery()
    )
    stmt = (
        select(
            Reminder.id,
            Reminder.org_id,
            Reminder.subscription_id,
            Reminder.lead_days,
            Reminder.days_left,
            Reminder.expires_on,
            Reminder.phone,
            Reminder.sender,
            Reminder.body,
            Reminder.segments,
            Reminder.attempts,
            Subscription.expires_on,
            Subscription.status,
            Subscription.plan,
            Subscription.amount,
            Subscription.currency,
            Customer.name,
            Customer.phone_e164,
            opted,
            nearest_sent,
            marked,
        )
        .join(Subscription, Subscription.id == Reminder.subscription_id)
        .join(Customer, Customer.id == Reminder.customer_id)
        .where(_id_among(conn, list(ids)), Reminder.status == PENDING)
        .order_by(Reminder.id)
    )
    return [TextRow(*cast(Any, row)) for row in conn.execute(stmt)]


def _id_among(conn: Connection, ids: list[int]) -> Any:
    """``reminders.id`` is one of ``ids``: on PostgreSQL one array parameter, so a batch's
    thousand ids are not a thousand placeholders to render and parse for every statement."""
    if conn.dialect.name == "postgresql":
        return Reminder.id == any_(bindparam("ids", ids, type_=postgresql.ARRAY(BigInteger)))
    return Reminder.id.in_(ids)


def add_opt_out(
    conn: Connection, *, org_id: int, phone_e164: str, source: str, now: datetime
) -> bool:
    """Record an opt-out (told as ``optout.created``); True if it is new. Idempotent through
    the unique key."""
    values = {"org_id": org_id, "phone_e164": phone_e164, "source": source, "created_at": now}
    dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(OptOut).values(**values).on_conflict_do_nothing().returning(OptOut.id)
    new = conn.execute(stmt).first() is not None
    if new:
        outbox.opt_outs(conn, EventType.OPTOUT_CREATED, [(org_id, phone_e164, source)], now=now)
    return new


def remove_opt_outs(
    conn: Connection,
    *,
    org_ids: Sequence[int],
    phone_e164: str,
    now: datetime,
    sources: Sequence[str] | None = None,
    source: str,
) -> int:
    """Lift a number's opt-outs in these organizations (only those from ``sources`` when
    given), each told as ``optout.removed`` by ``source``; how many were lifted."""
    if not org_ids:
        return 0
    stmt = delete(OptOut).where(OptOut.org_id.in_(list(org_ids)), OptOut.phone_e164 == phone_e164)
    if sources is not None:
        stmt = stmt.where(OptOut.source.in_(list(sources)))
    lifted = list(conn.execute(stmt.returning(OptOut.org_id)).scalars())
    outbox.opt_outs(
        conn, EventType.OPTOUT_REMOVED, [(o, phone_e164, source) for o in lifted], now=now
    )
    return len(lifted)


def release_stale_sending(
    conn: Connection, *, older_than: datetime, now: datetime, to_status: str
) -> int:
    """Rows left in ``sending`` by a worker that died: ``unknown`` (ask the provider) or,
    for a provider that cannot be asked, back to ``pending``."""
    values: dict[str, Any] = {"status": to_status, "updated_at": now}
    if to_status == PENDING:
        values["next_attempt_at"] = now
    else:
        values["reason"] = "outcome_unknown"
    result = conn.execute(
        update(Reminder)
        .where(Reminder.status == SENDING, Reminder.claimed_at < older_than)
        .values(**values)
    )
    return result.rowcount or 0


def count_by_status(
    conn: Connection, *, org_ids: Iterable[int] | None = None, local_date: date | None = None
) -> dict[tuple[int, str], int]:
    stmt = select(Reminder.org_id, Reminder.status, func.count()).group_by(
        Reminder.org_id, Reminder.status
    )
    if org_ids is not None:
        stmt = stmt.where(Reminder.org_id.in_(list(org_ids)))
    if local_date is not None:
        stmt = stmt.where(Reminder.local_date == local_date)
    return {(org_id, status): n for org_id, status, n in conn.execute(stmt)}


def active_org_ids(conn: Connection, slugs: Sequence[str] | None = None) -> list[int]:
    stmt = select(Organization.id).where(Organization.active.is_(True)).order_by(Organization.id)
    if slugs:
        stmt = stmt.where(Organization.slug.in_(list(slugs)))
    return list(conn.execute(stmt).scalars())


# --- the sweeper, reconciliation and delivery receipts ---------------------------------------


def settle_unknown(
    conn: Connection,
    row_id: int,
    *,
    status: str,
    claimed_at: datetime | None,
    found: tuple[str, datetime, str | None] | None,
    now: datetime,
) -> bool:
    """Reconciliation's verdict on an ``unknown`` (or stale ``sending``) row, for the attempt
    that began at ``claimed_at``: found at the provider (message id, when, delivery status) →
    ``sent``; not found → ``pending`` for one more attempt, due now."""
    same_attempt = (
        Reminder.claimed_at.is_(None) if claimed_at is None else Reminder.claimed_at == claimed_at
    )
    values: dict[str, Any]
    if found is not None:
        message_id, sent_at, delivery = found
        values = {
            "status": SENT,
            "provider_message_id": message_id,
            "sent_at": sent_at,
            "reason": None,
            "error_code": None,
            "error_message": None,
            "updated_at": now,
        }
        if delivery:
            values["delivery_status"] = delivery
    else:
        values = {
            "status": PENDING,
            "next_attempt_at": now,
            "reason": "reconciled_not_sent",
            "updated_at": now,
        }
    result = conn.execute(
        update(Reminder)
        .where(Reminder.id == row_id, Reminder.status == status, same_attempt)
        .values(**values)
    )
    settled = (result.rowcount or 0) == 1
    if settled and found is not None:
        outbox.message_rows(conn, EventType.MESSAGE_SENT, [row_id], now=now)
        apply_early_receipts(conn, [found[0]], now=now)
    return settled


def record_delivery(
    conn: Connection,
    *,
    message_sid: str,
    status: str,
    lower: Sequence[str],
    error_code: str | None,
    now: datetime,
) -> bool:
    """A delivery receipt: the row with that message id takes ``status`` if it is newer than
    what it has (one of ``lower``, or none yet); a final one is told as an event."""
    values: dict[str, object] = {"delivery_status": status, "updated_at": now}
    if error_code:
        values["error_code"] = error_code
    moved = list(
        conn.execute(
            update(Reminder)
            .where(
                Reminder.provider_message_id == message_sid,
                or_(Reminder.delivery_status.is_(None), Reminder.delivery_status.in_(list(lower))),
            )
            .values(**values)
            .returning(Reminder.id)
        ).scalars()
    )
    if status in RECEIPT_EVENTS:
        outbox.message_rows(conn, RECEIPT_EVENTS[status], moved, now=now)
    return bool(moved)


@dataclass(frozen=True)
class DeliveryMove:
    """A row's delivery status and error code after receipts kept for its message id."""

    row_id: int
    status: str
    error_code: str | None


def record_deliveries(conn: Connection, moves: Sequence[DeliveryMove], *, now: datetime) -> int:
    """Delivery receipts folded for rows the caller holds (their message id just recorded in
    this transaction): one statement for the batch."""
    if not moves:
        return 0
    result = conn.execute(
        update(Reminder)
        .where(Reminder.id == bindparam("b_row_id"))
        .values(
            delivery_status=bindparam("b_status"),
            error_code=bindparam("b_error_code"),
            updated_at=now,
        ),
        [{"b_row_id": m.row_id, "b_status": m.status, "b_error_code": m.error_code} for m in moves],
    )
    for status, type_ in RECEIPT_EVENTS.items():
        told = [m.row_id for m in moves if m.status == status]
        outbox.message_rows(conn, type_, told, now=now)
    return result.rowcount or 0


def apply_early_receipts(conn: Connection, sids: Sequence[str], *, now: datetime) -> int:
    """Status callbacks that came before these message ids (just recorded on their rows in
    this transaction) applied as if they had come after: the same rank rule, 30036 requeues,
    30005/30006 mark the number. Returns how many rows they moved."""
    early_receipts.lock(conn, sids)
    taken = early_receipts.take(conn, sids)
    if not taken:
        return 0
    by_row: dict[int, list[early_receipts.Taken]] = {}
    for t in taken:
        by_row.setdefault(t.row_id, []).append(t)
    current = dict(
        (rid, (ds, code))
        for rid, ds, code in conn.execute(
            select(Reminder.id, Reminder.delivery_status, Reminder.error_code).where(
                Reminder.id.in_(list(by_row))
            )
        )
    )
    moves: list[DeliveryMove] = []
    expired: list[str] = []
    for row_id, kept in by_row.items():
        ds, code = current.get(row_id, (None, None))
        verdict = delivery.fold(ds, code, [t.receipt for t in kept])
        if isinstance(verdict, delivery.Expired):
            expired.append(kept[0].sid)
        elif verdict is not None:
            moves.append(DeliveryMove(row_id, verdict.status, verdict.error_code))
        for t in kept:
            if t.receipt.error_code in delivery.UNDELIVERABLE_CODES:
                mark_of_message(
                    conn, sid=t.sid, phone_e164=t.phone_e164, code=t.receipt.error_code, now=now
                )
    return record_deliveries(conn, moves, now=now) + requeue_expired(conn, expired, now=now)


def follow_owners(conn: Connection, *, org_id: int, subscriptions: Sequence[str]) -> int:
    """Texts not sent yet of these subscriptions (external ids) that now belong to another
    customer (the host moved them): they go to the new owner, by its name and number, not to
    the one they were planned for. Rows already tried keep the customer they went to."""
    if not subscriptions:
        return 0
    owner = (
        select(Subscription.customer_id)
        .where(Subscription.id == Reminder.subscription_id)
        .scalar_subquery()
    )
    these = select(Subscription.id).where(
        Subscription.org_id == org_id, Subscription.external_id.in_(list(subscriptions))
    )
    result = conn.execute(
        update(Reminder)
        .where(
            Reminder.subscription_id.in_(these.scalar_subquery()),
            Reminder.status == PENDING,
            Reminder.customer_id != owner,
        )
        .values(customer_id=owner)
    )
    return result.rowcount or 0


def unskip_undeliverable(
    conn: Connection, customer_ids: Iterable[int], *, local_date: date, now: datetime
) -> int:
    """Customers whose number just changed: their texts of ``local_date`` (their
    organization's today) skipped for the old number being undeliverable are due again. The
    sender re-checks each (the new number may be marked too, the day's lead may have gone)."""
    ids = list(customer_ids)
    if not ids:
        return 0
    result = conn.execute(
        update(Reminder)
        .where(
            Reminder.customer_id.in_(ids),
            Reminder.status == SKIPPED,
            Reminder.reason == UNDELIVERABLE,
            Reminder.local_date == local_date,
        )
        .values(status=PENDING, reason=None, next_attempt_at=now, updated_at=now)
    )
    return result.rowcount or 0


def save_circuit(
    conn: Connection,
    *,
    account: str,
    opened_at: datetime | None,
    failures: int,
    numbers: int,
    now: datetime,
) -> None:
    """A provider account's circuit opened (``opened_at``) or closed (None)."""
    values = {
        "account": account,
        "opened_at": opened_at,
        "failures": failures,
        "numbers": numbers,
        "updated_at": now,
    }
    dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(ProviderCircuit).values(**values)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[ProviderCircuit.account],
            set_={k: stmt.excluded[k] for k in values if k != "account"},
        )
    )


def circuits(conn: Connection) -> dict[str, datetime | None]:
    """Every provider account its workers reported, and since when its circuit is open (None:
    closed)."""
    stmt = select(ProviderCircuit.account, ProviderCircuit.opened_at)
    return {account: at for account, at in conn.execute(stmt)}


def open_circuits(conn: Connection) -> dict[str, datetime]:
    """Provider accounts whose circuit is open, and since when."""
    return {account: at for account, at in circuits(conn).items() if at is not None}

"""Planning SQL: find a day's due reminders in one set-based query, write them in bulk.

The candidates come from one SELECT per group of organizations sharing a local date and lead
days (a handful for a whole day; on PostgreSQL all of them one statement). Each page of rows
goes in with one INSERT … SELECT … ON CONFLICT DO NOTHING (rendered in Python first, from a
COPY-filled temporary table, when the plan shows bodies): the ledger's unique key
(subscription, expiry, lead day) makes a re-run or a concurrent run insert nothing twice,
whatever the application did.

Where a day's plan spends its time on PostgreSQL (bench/plan_day.py --statements): about half
of the page inserts are the ledger's two foreign-key checks (subscription and organization as
one key, customer), one trigger a row each (EXPLAIN ANALYZE: 0.95 s of 1.8 s for 100,000 rows).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Connection,
    Date,
    Integer,
    Numeric,
    String,
    bindparam,
    column,
    text,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.expression import ColumnClause

from app.db.models import Reminder, UTCDateTime

# Orgs per statement elsewhere: keeps the IN list well under every driver's parameter limit.
_ORGS_PER_STATEMENT = 900
# Planning at least this many rows refreshes the ledger's statistics (see refresh_statistics).
REFRESH_STATISTICS_AFTER = 1000

COLUMNS = (
    "org_id",
    "subscription_id",
    "customer_id",
    "expires_on",
    "lead_days",
    "local_date",
    "days_left",
    "phone",
    "sender",
    "status",
    "reason",
    "body",
    "template_fallback",
    "segments",
    "encoding",
    "error_code",
    "error_message",
    "attempts",
    "next_attempt_at",
    "created_at",
    "updated_at",
)


@dataclass(frozen=True)
class OrgDay:
    """One organization's planning input: its local "today" and its due (days_left, lead) pairs."""

    org_id: int
    local_date: date
    offsets: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Candidate:
    """A reminder due today that the ledger does not have yet."""

    subscription_id: int
    org_id: int
    customer_id: int
    expires_on: date
    lead_days: int
    days_left: int
    phone: str | None
    sender: str | None
    skip_reason: str | None  # invalid_phone | opted_out | undeliverable | None
    customer_name: str
    plan: str
    amount: Decimal | None
    currency: str | None
    local_date: date


# The SELECT's columns, typed, so every backend hands back dates and decimals (SQLite would not).
_RESULT_TYPES: list[ColumnClause[Any]] = [
    column("subscription_id", BigInteger),
    column("org_id", BigInteger),
    column("customer_id", BigInteger),
    column("expires_on", Date),
    column("lead_days", Integer),
    column("days_left", Integer),
    column("phone", String),
    column("sender", String),
    column("skip_reason", String),
    column("customer_name", String),
    column("plan", String),
    column("amount", Numeric(12, 2)),
    column("currency", String),
    column("local_date", Date),
    column("turn", BigInteger),
]


def _candidates_sql(dialect: str, values: str, p: str) -> str:
    """One group's candidates (organizations sharing a date and lead days); ``p`` prefixes its
    parameters, so several groups can be one statement."""
    date_ = "CAST({} AS DATE)" if dialect == "postgresql" else "{}"
    int_ = "CAST({} AS INTEGER)" if dialect == "postgresql" else "{}"
    # PostgreSQL takes every organization as one array: one scan of subscriptions for them all.
    orgs = f"= ANY(:{p}orgs)" if dialect == "postgresql" else f"IN :{p}orgs"
    return f"""
WITH m(days_left, lead_days, expires_on) AS (VALUES {values})
SELECT s.id AS subscription_id, s.org_id, s.customer_id, s.expires_on,
       {int_.format("m.lead_days")} AS lead_days, {int_.format("m.days_left")} AS days_left,
       COALESCE(c.phone_e164, c.phone) AS phone, o.sender,
       CASE WHEN c.phone_e164 IS NULL THEN 'invalid_phone'
            WHEN oo.id IS NOT NULL THEN 'opted_out'
            WHEN EXISTS (SELECT 1 FROM undeliverable_numbers un WHERE un.org_id = s.org_id
                         AND un.phone_e164 = c.phone_e164) THEN 'undeliverable' END
           AS skip_reason,
       c.name AS customer_name, s.plan, s.amount, s.currency,
       {date_.format(f":{p}local_date")} AS local_date,
       row_number() OVER (PARTITION BY s.org_id ORDER BY s.id, m.lead_days) AS turn
FROM m
JOIN subscriptions s ON s.expires_on = {date_.format("m.expires_on")} AND s.org_id {orgs}
JOIN customers c ON c.id = s.customer_id
JOIN organizations o ON o.id = s.org_id
LEFT JOIN opt_outs oo ON oo.org_id = s.org_id AND oo.phone_e164 = c.phone_e164
WHERE s.status = 'active'
  AND NOT EXISTS (SELECT 1 FROM reminders r WHERE r.subscription_id = s.id
                  AND r.expires_on = s.expires_on AND r.lead_days = {int_.format("m.lead_days")})
"""


# ``turn`` numbers each organization's candidates 1, 2, 3 …: read in (turn, org_id) order, the
# day takes turns between organizations. (PostgreSQL makes the table from the query itself.)
_CANDIDATE_TABLE = """
CREATE TEMPORARY TABLE _candidates (
    subscription_id BIGINT, org_id BIGINT, customer_id BIGINT, expires_on DATE,
    lead_days INTEGER, days_left INTEGER, phone VARCHAR(64), sender VARCHAR(64),
    skip_reason VARCHAR(20), customer_name VARCHAR(200), plan VARCHAR(200),
    amount NUMERIC(12, 2), currency VARCHAR(3), local_date DATE, turn BIGINT
)"""

_PAGE_END_SQL = """
SELECT turn, org_id FROM _candidates WHERE (turn, org_id) > (:turn, :org_id)
ORDER BY turn, org_id LIMIT 1 OFFSET :skip
"""

# A page of candidates into the ledger as they are: pending (or skipped with their reason),
# no body yet, due now; ``stamp`` is ``updated_at`` (see row_values' ``handed_over``).
_INSERT_PAGE_SQL = """
WITH page AS (
    SELECT * FROM _candidates WHERE (turn, org_id) > (:turn, :org_id)
    ORDER BY turn, org_id LIMIT :page
)
INSERT INTO reminders (org_id, subscription_id, customer_id, expires_on, lead_days, local_date,
                       days_left, phone, sender, status, reason, attempts, next_attempt_at,
                       created_at, updated_at)
SELECT org_id, subscription_id, customer_id, expires_on, lead_days, local_date, days_left,
       phone, sender, CASE WHEN skip_reason IS NULL THEN 'pending' ELSE 'skipped' END,
       skip_reason, 0, :now, :now, CASE WHEN skip_reason IS NULL THEN :stamp ELSE :now END
FROM page WHERE true
ON CONFLICT (subscription_id, expires_on, lead_days) DO NOTHING
RETURNING id, status
"""

# PostgreSQL hands back what the page added as one row a status, with the new pending ids as
# one sorted array, not a row each: measured 0.07 s less a 100,000-row day (the rows' Python
# conversion and sort). SQLite takes no INSERT inside WITH.
_INSERT_PAGE_COUNTED_SQL = f"""
WITH added AS ({_INSERT_PAGE_SQL})
SELECT status, count(*), array_agg(id ORDER BY id) FILTER (WHERE status = 'pending')
FROM added GROUP BY status
"""

_PAGE_SQL = """
SELECT subscription_id, org_id, customer_id, expires_on, lead_days, days_left, phone, sender,
       skip_reason, customer_name, plan, amount, currency, local_date, turn
FROM _candidates WHERE (turn, org_id) > (:turn, :org_id) ORDER BY turn, org_id LIMIT :page
"""


def candidates(
    conn: Connection, org_days: Sequence[OrgDay], *, page: int = 5000
) -> Iterator[list[Candidate]]:
    """Every due reminder the ledger lacks, in pages that take turns between organizations.

    The set is computed first into a temporary table (see _fill_candidates), and only then
    read, page by page (memory stays flat): the query that checks the ledger never runs
    while this plan is writing to it. Each page is its own query on the table's (turn,
    organization) index, so the caller may commit between pages; the table lives as long as
    the connection, until the last page.
    """
    if not _fill_candidates(conn, org_days):
        return
    read = text(_PAGE_SQL).columns(*_RESULT_TYPES)
    turn, org_id = 0, 0
    while True:
        part = conn.execute(read, {"turn": turn, "org_id": org_id, "page": page}).all()
        if not part:
            break
        turn, org_id = part[-1].turn, part[-1].org_id
        yield [cast(Any, Candidate)(*row[:-1]) for row in part]
    conn.execute(text("DROP TABLE _candidates"))


def insert_candidates(
    conn: Connection,
    org_days: Sequence[OrgDay],
    *,
    now: datetime,
    page: int = 5000,
    handed_over: bool = False,
) -> Iterator[Inserted]:
    """``candidates`` written straight into the ledger, page by page, with no body (each text
    is rendered when it leaves): one INSERT … SELECT … ON CONFLICT DO NOTHING a page, nothing
    read back but the new ids. What each page added, as ``insert_rows`` says it."""
    if not _fill_candidates(conn, org_days):
        return
    last = text(_PAGE_END_SQL)
    stamp = now + HANDED_OVER if handed_over else now
    turn, org_id = 0, 0
    while True:
        end = conn.execute(last, {"turn": turn, "org_id": org_id, "skip": page - 1}).first()
        upto = (end.turn, end.org_id) if end is not None else None
        params = {
            "turn": turn,
            "org_id": org_id,
            "page": page,
            "now": _utc(conn, now),
            "stamp": _utc(conn, stamp),
        }
        yield _insert_page(conn, params)
        if upto is None:
            break
        turn, org_id = upto
    conn.execute(text("DROP TABLE _candidates"))


def _insert_page(conn: Connection, params: dict[str, Any]) -> Inserted:
    """One page into the ledger: the new rows by status, and the new pending ids in order."""
    done = Inserted(counts={}, pending=[])
    if conn.dialect.name == "postgresql":
        for status, added, pending in conn.execute(text(_INSERT_PAGE_COUNTED_SQL), params):
            done.counts[status] = added
            done.pending = pending or done.pending
        return done
    for new_id, status in conn.execute(text(_INSERT_PAGE_SQL), params):
        done.counts[status] = done.counts.get(status, 0) + 1
        if status == "pending":
            done.pending.append(int(new_id))
    done.pending.sort()
    return done


def _utc(conn: Connection, moment: datetime) -> datetime:
    """A timestamp as the ledger's UTC columns store it on this backend (naive on SQLite)."""
    value = UTCDateTime().process_bind_param(moment, conn.dialect)
    assert value is not None
    return value


def _fill_candidates(conn: Connection, org_days: Sequence[OrgDay]) -> bool:
    """``_candidates`` made for these organizations' days; False when none has a lead day.

    Organizations sharing a date and lead days are one group and one SELECT; on PostgreSQL all
    groups are one CREATE TABLE … AS, which it may run with parallel workers (it runs an
    INSERT … SELECT alone: measured 0.5x the time for a 100,000-row day)."""
    groups: dict[tuple[date, tuple[tuple[int, int], ...]], list[int]] = {}
    for od in org_days:
        if od.offsets:
            groups.setdefault((od.local_date, od.offsets), []).append(od.org_id)
    if not groups:
        return False
    dialect = conn.dialect.name
    selects: list[tuple[str, dict[str, Any]]] = []
    for g, ((local_date, offsets), org_ids) in enumerate(groups.items()):
        p = f"g{g}_"
        rows = ",".join(f"(:{p}l{j}, :{p}k{j}, :{p}e{j})" for j in range(len(offsets)))
        params: dict[str, Any] = {f"{p}local_date": local_date, f"{p}orgs": org_ids}
        for j, (days_left, lead) in enumerate(offsets):
            expires_on = local_date + timedelta(days=days_left)
            params.update({f"{p}l{j}": days_left, f"{p}k{j}": lead, f"{p}e{j}": expires_on})
        selects.append((_candidates_sql(dialect, rows, p), params))
    conn.execute(text("DROP TABLE IF EXISTS _candidates"))
    if dialect == "postgresql":
        union = text(
            "CREATE TEMPORARY TABLE _candidates AS "
            + " UNION ALL ".join(f"({sql})" for sql, _ in selects)
        ).bindparams(
            *(bindparam(f"g{g}_orgs", type_=ARRAY(BigInteger)) for g in range(len(selects)))
        )
        conn.execute(union, {k: v for _, params in selects for k, v in params.items()})
    else:
        conn.execute(text(_CANDIDATE_TABLE))
        for g, (sql, params) in enumerate(selects):
            fill = text("INSERT INTO _candidates " + sql)
            fill = fill.bindparams(bindparam(f"g{g}_orgs", expanding=True))
            org_ids = params[f"g{g}_orgs"]
            for i in range(0, len(org_ids), _ORGS_PER_STATEMENT):
                conn.execute(fill, {**params, f"g{g}_orgs": org_ids[i : i + _ORGS_PER_STATEMENT]})
    conn.execute(text("CREATE INDEX _candidates_turn ON _candidates (turn, org_id)"))
    return True


@dataclass
class Inserted:
    """What one page's insert added: new rows by status, and the new ``pending`` rows' ids."""

    counts: dict[str, int]
    pending: list[int]


def insert_rows(conn: Connection, rows: list[dict[str, Any]]) -> Inserted:
    """Insert planned rows, skipping any the ledger already has.

    The new pending rows' ids come back in ascending order, which is the order of ``rows``.
    """
    done = Inserted(counts={}, pending=[])
    if not rows:
        return done
    if conn.dialect.name == "postgresql":
        returned = _insert_copy(conn, rows)
    else:
        stmt = sqlite.insert(Reminder).on_conflict_do_nothing().returning(Reminder.id)
        returned = []
        for row in rows:
            new_id = conn.execute(stmt, row).scalar()
            if new_id is not None:
                returned.append((new_id, row["status"]))
    for new_id, status in returned:
        done.counts[status] = done.counts.get(status, 0) + 1
        if status == "pending":
            done.pending.append(new_id)
    done.pending.sort()
    return done


def _insert_copy(conn: Connection, rows: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """PostgreSQL: COPY into a temporary table, then one INSERT … SELECT … ON CONFLICT.

    The SELECT reads the freshly filled table in the order it was written, so the ledger's
    ids are handed out in the order of ``rows``.
    """
    cols = ", ".join(COLUMNS)
    conn.execute(
        text(f"CREATE TEMP TABLE IF NOT EXISTS _plan AS SELECT {cols} FROM reminders WITH NO DATA")
    )
    conn.execute(text("TRUNCATE _plan"))
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur, cur.copy(f"COPY _plan ({cols}) FROM STDIN") as cp:
        for row in rows:
            cp.write_row(tuple(row[c] for c in COLUMNS))
    result = conn.execute(
        text(
            f"INSERT INTO reminders ({cols}) SELECT {cols} FROM _plan "
            "ON CONFLICT (subscription_id, expires_on, lead_days) DO NOTHING RETURNING id, status"
        )
    )
    return [(int(new_id), str(status)) for new_id, status in result]


def refresh_statistics(conn: Connection) -> None:
    """ANALYZE the ledger after a big planning insert (PostgreSQL; a no-op elsewhere).

    Until autovacuum gets to it (a minute or more later), PostgreSQL believes the day's tens of
    thousands of new pending rows are a few dozen, and finds a batch of ids by scanning every
    pending row through the status index: each batch's hand-over and claim then cost
    milliseconds per row instead of microseconds. ANALYZE in the planning transaction sees
    the transaction's own rows, so the first batch already gets a good plan.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("ANALYZE reminders"))


HANDED_OVER = timedelta(microseconds=1)


def row_values(
    c: Candidate,
    *,
    now: datetime,
    status: str,
    reason: str | None = None,
    body: str | None = None,
    segments: int | None = None,
    encoding: str | None = None,
    template_fallback: str | None = None,
    handed_over: bool = False,
) -> dict[str, Any]:
    """A planned row's columns. ``handed_over``: its message goes to the broker as soon as the
    page commits (the daily run), so it is inserted with the mark of a row handed over
    (``updated_at`` after ``next_attempt_at``, see ``ledger.no_message``) and the hand-over
    writes nothing more; if the message is lost, the sweeper takes it after the lease."""
    return {
        "org_id": c.org_id,
        "subscription_id": c.subscription_id,
        "customer_id": c.customer_id,
        "expires_on": c.expires_on,
        "lead_days": c.lead_days,
        "local_date": c.local_date,
        "days_left": c.days_left,
        "phone": c.phone,
        "sender": c.sender,
        "status": status,
        "reason": reason,
        "body": body,
        "template_fallback": template_fallback,
        "segments": segments,
        "encoding": encoding,
        "error_code": None,
        "error_message": None,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now + HANDED_OVER if handed_over else now,
    }

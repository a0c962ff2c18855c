"""CSV import of customers and subscriptions: validate everything, then upsert in bulk.

A bad row is reported with its line number and reason and, unless ``skip_invalid``, nothing from
the file is stored: the whole import is one transaction. A number that is not a valid phone is
not a bad row: the customer is stored and the ledger later shows ``skipped: invalid_phone``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql, sqlite

from app.db import ledger
from app.db.models import Customer, Organization, Subscription
from app.domain import planning
from app.domain.phones import InvalidPhone, normalize_phone
from app.errors import ValidationError
from app.services.orgs import get_org

REQUIRED = ("customer_id", "name", "phone", "subscription_id", "plan", "expires_on")
OPTIONAL = ("amount", "currency", "status")
STATUSES = ("active", "cancelled")
CHUNK = 5000


MAX_LISTED = 100  # bad rows (and invalid phones) named one by one; beyond, a count


@dataclass
class ImportReport:
    rows: int = 0
    customers: int = 0
    subscriptions: int = 0
    invalid_phones: int = 0
    bad_rows: int = 0
    errors: list[str] = field(default_factory=list)  # the first MAX_LISTED bad rows
    phone_errors: list[str] = field(default_factory=list)  # the first MAX_LISTED invalid phones

    def bad(self, message: str) -> None:
        self.bad_rows += 1
        if len(self.errors) < MAX_LISTED:
            self.errors.append(message)

    def listed_errors(self) -> list[str]:
        return _listed(self.errors, self.bad_rows, "bad rows")

    def listed_phone_errors(self) -> list[str]:
        return _listed(self.phone_errors, self.invalid_phones, "invalid phone numbers")


def _listed(items: list[str], total: int, what: str) -> list[str]:
    more = total - len(items)
    return items + ([f"… and {more} more {what}"] if more > 0 else [])


@dataclass(frozen=True)
class _Row:
    line: int
    customer_id: str
    name: str
    phone: str
    phone_e164: str | None
    phone_error: str | None
    subscription_id: str
    plan: str
    expires_on: date
    amount: Decimal | None
    currency: str | None
    status: str


def _parse_row(line: int, raw: dict[str, str | None], country: str, *, at: str = "") -> _Row:
    """One row or item, checked; ``at`` names where it is ("line 3", "item 2")."""
    at = at or f"line {line}"

    def get(name: str) -> str:
        return (raw.get(name) or "").strip()

    for name in REQUIRED:
        if name != "phone" and not get(name):
            raise ValidationError(f"{at}: {name} is empty")
    try:
        expires_on = date.fromisoformat(get("expires_on"))
    except ValueError:
        raise ValidationError(
            f"{at}: expires_on {get('expires_on')!r} is not a date like 2030-01-31"
        ) from None
    amount = None
    if get("amount"):
        try:
            amount = Decimal(get("amount"))
        except InvalidOperation:
            raise ValidationError(f"{at}: amount {get('amount')!r} is not a number") from None
        if not amount.is_finite() or abs(amount) >= Decimal("1e10"):
            raise ValidationError(f"{at}: amount {get('amount')!r} is out of range")
    currency = get("currency").upper() or None
    if currency is not None and (len(currency) != 3 or not currency.isalpha()):
        raise ValidationError(f"{at}: currency {currency!r} is not a 3-letter code like USD")
    status = get("status").lower() or "active"
    if status not in STATUSES:
        raise ValidationError(f"{at}: status {status!r} must be active or cancelled")
    for name in ("customer_id", "subscription_id"):
        if len(get(name)) > 100:
            raise ValidationError(f"{at}: {name} is longer than 100 characters")
    try:
        e164, error = normalize_phone(get("phone"), country), None
    except InvalidPhone as exc:
        e164, error = None, str(exc)[:200]
    return _Row(
        line=line,
        customer_id=get("customer_id"),
        name=get("name")[:200],
        phone=get("phone")[:64],
        phone_e164=e164,
        phone_error=error,
        subscription_id=get("subscription_id"),
        plan=get("plan")[:200],
        expires_on=expires_on,
        amount=amount,
        currency=currency,
        status=status,
    )


def _header(reader: Any) -> list[str]:
    """The header line, checked; each refusal says what was found instead."""
    first = next(reader, None)
    while first == []:
        first = next(reader, None)
    if first is None:
        raise ValidationError(
            f"the file is empty; expected a header line {','.join(REQUIRED)} and one line per "
            "subscription"
        )
    header = [h.strip() for h in first]
    expected = f"expected {','.join(REQUIRED)}"
    if len(header) == 1:
        for delimiter, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
            if delimiter in header[0]:
                raise ValidationError(
                    f"line 1: the columns are separated by {name} ({delimiter!r}), not commas; "
                    f"save the file as comma-separated CSV ({expected})"
                )
    missing = [h for h in REQUIRED if h not in header]
    cased = [h for h in header if h not in REQUIRED + OPTIONAL and h.lower() in REQUIRED + OPTIONAL]
    if cased:
        raise ValidationError(
            f"line 1: column names are lowercase: found {', '.join(cased)}; {expected}"
        )
    if missing:
        raise ValidationError(f"line 1: header is missing {', '.join(missing)}; {expected}")
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise ValidationError(f"line 1: column {', '.join(repeated)} appears more than once")
    unknown = [h for h in header if h not in REQUIRED + OPTIONAL]
    if unknown:
        raise ValidationError(f"line 1: unknown column {', '.join(unknown)}")
    return header


def _check_fields(start: int, end: int, header: list[str], fields: list[str]) -> dict[str, str]:
    """The fields by column, or the reason the line cannot be read as one row."""
    for name, value in zip(header, fields, strict=False):
        if "\n" in value or "\r" in value:
            raise ValidationError(
                f"line {start}: unterminated quote: the quoted {name} opened on this line runs "
                f"on to line {end}"
            )
        if "\x00" in value:
            raise ValidationError(
                f"line {start}: {name} contains a NUL byte (\\x00); is this a text CSV file?"
            )
    if len(fields) > len(header):
        raise ValidationError(f"line {start}: more fields than the header has")
    return dict(zip(header, fields, strict=False))


def read_rows(
    stream: TextIO, *, country: str, skip_invalid: bool, report: ImportReport
) -> list[_Row]:
    """Every row checked; with ``skip_invalid`` the bad ones are listed in the report,
    otherwise every bad row (up to MAX_LISTED) is named in one refusal."""
    reader = csv.reader(stream)
    header = _header(reader)
    rows: list[_Row] = []
    seen: dict[str, int] = {}
    last = reader.line_num
    while True:
        start = last + 1
        try:
            fields = next(reader, None)
        except csv.Error as exc:
            report.bad(f"line {start}: cannot be read as CSV ({exc}); an unterminated quote?")
            break
        last = reader.line_num
        if fields is None:
            break
        if not fields:
            continue
        report.rows += 1
        try:
            raw = _check_fields(start, last, header, fields)
            rows.append(_check_row(start, dict(raw), country, seen, label="line"))
        except ValidationError as exc:
            report.bad(str(exc))
    if report.bad_rows and not skip_invalid:
        if report.bad_rows == 1:
            raise ValidationError(report.errors[0])
        raise ValidationError(
            f"{report.bad_rows} bad rows; nothing was imported (fix them, or --skip-invalid "
            "stores the good rows)",
            details=tuple(report.listed_errors()),
        )
    return rows


def check_rows(
    numbered: Iterable[tuple[int, dict[str, str | None]]],
    *,
    country: str,
    label: str = "line",
    stop_at_first: bool = False,
) -> tuple[list[_Row], list[tuple[int, str]]]:
    """Every row checked (a JSON item, as a CSV line is): the good rows, and each bad one's
    position and reason."""
    rows: list[_Row] = []
    errors: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for position, raw in numbered:
        try:
            rows.append(_check_row(position, raw, country, seen, label=label))
        except ValidationError as exc:
            errors.append((position, str(exc)))
            if stop_at_first:
                break
    return rows, errors


def _check_row(
    position: int,
    raw: dict[str, str | None],
    country: str,
    seen: dict[str, int],
    *,
    label: str,
) -> _Row:
    """One CSV line or JSON item checked, and not a second row for a subscription seen."""
    at = f"{label} {position}"
    if None in raw:  # more fields than the header has
        raise ValidationError(f"{at}: more fields than the header has")
    row = _parse_row(position, raw, country, at=at)
    if row.subscription_id in seen:
        raise ValidationError(
            f"{at}: subscription_id {row.subscription_id!r} "
            f"already on {label} {seen[row.subscription_id]}"
        )
    seen[row.subscription_id] = position
    return row


def _upsert(conn: Connection, table: Any, rows: list[dict[str, Any]], keys: list[str]) -> None:
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table)
    updates = {c: stmt.excluded[c] for c in rows[0] if c not in keys}
    conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=updates), rows)


def _store(conn: Connection, org_id: int, rows: list[_Row]) -> None:
    customers: dict[str, dict[str, Any]] = {}
    for r in rows:  # the last line for a customer wins
        customers[r.customer_id] = {
            "org_id": org_id,
            "external_id": r.customer_id,
            "name": r.name,
            "phone": r.phone,
            "phone_e164": r.phone_e164,
            "phone_error": r.phone_error,
        }
    of_customers = select(Customer.external_id, Customer.id, Customer.phone_e164).where(
        Customer.org_id == org_id, Customer.external_id.in_(list(customers))
    )
    before = {ext: phone for ext, _, phone in conn.execute(of_customers)}
    _upsert(conn, Customer.__table__, list(customers.values()), ["org_id", "external_id"])
    ids = {ext: cid for ext, cid, _ in conn.execute(of_customers)}
    renumbered = [
        ids[ext]
        for ext, c in customers.items()
        if ext in before and c["phone_e164"] is not None and before[ext] != c["phone_e164"]
    ]
    if renumbered:
        _renumbered(conn, org_id, renumbered)
    _upsert(
        conn,
        Subscription.__table__,
        [
            {
                "org_id": org_id,
                "customer_id": ids[r.customer_id],
                "external_id": r.subscription_id,
                "plan": r.plan,
                "expires_on": r.expires_on,
                "amount": r.amount,
                "currency": r.currency,
                "status": r.status,
            }
            for r in rows
        ],
        ["org_id", "external_id"],
    )
    ledger.follow_owners(conn, org_id=org_id, subscriptions=[r.subscription_id for r in rows])


def _renumbered(conn: Connection, org_id: int, customer_ids: list[int]) -> None:
    """A changed number is not the one the provider refused: today's texts skipped for that
    are due again (the sender re-checks them against the new number)."""
    now = planning.utcnow()
    tz = conn.execute(select(Organization.timezone).where(Organization.id == org_id)).scalar_one()
    ledger.unskip_undeliverable(
        conn, customer_ids, local_date=planning.local_date(now, tz), now=now
    )


def import_csv(
    conn: Connection,
    slug: str,
    path: Path,
    *,
    skip_invalid: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Validate the whole file, then upsert it; the caller's transaction makes it all-or-nothing."""
    org = get_org(conn, slug)
    report = ImportReport()
    try:
        with path.open(newline="", encoding="utf-8-sig") as stream:
            rows = read_rows(stream, country=org.country, skip_invalid=skip_invalid, report=report)
    except OSError as exc:
        raise ValidationError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValidationError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise ValidationError(f"{path}: not a readable CSV file ({exc})") from None
    store_rows(conn, org.id, rows, progress=progress)
    report.customers = len({r.customer_id for r in rows})
    report.subscriptions = len(rows)
    invalid = [r for r in rows if r.phone_e164 is None]
    report.invalid_phones = len(invalid)
    report.phone_errors = [f"line {r.line}: {r.phone_error}" for r in invalid[:MAX_LISTED]]
    return report


def store_rows(
    conn: Connection,
    org_id: int,
    rows: list[_Row],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Upsert checked rows by their external ids, in chunks, in the caller's transaction."""
    for start in _chunks(len(rows)):
        part = rows[start : start + CHUNK]
        _store(conn, org_id, part)
        if progress:
            progress(start + len(part), len(rows))


def _chunks(total: int) -> Iterable[int]:
    return range(0, total, CHUNK)


class BulkError(ValidationError):
    """Some items are bad, and nothing was stored: every bad item's index and reason."""

    def __init__(self, errors: list[tuple[int, str]]) -> None:
        more = f" (and {len(errors) - 1} more bad items)" if len(errors) > 1 else ""
        super().__init__(f"{errors[0][1]}{more}; nothing was stored")
        self.errors = errors


def upsert_items(
    conn: Connection,
    slug: str,
    items: Sequence[Mapping[str, str | None]],
    *,
    partial: bool = False,
    label: str = "item",
) -> tuple[ImportReport, list[tuple[int, str]]]:
    """The API's bulk upsert: the same checks and writes as a CSV import, item by item.

    All or nothing (BulkError naming every bad item) unless ``partial``: then the good items
    are stored and the bad ones returned with their index and reason.
    """
    org = get_org(conn, slug)
    rows, errors = check_rows(
        ((i, dict(item)) for i, item in enumerate(items)), country=org.country, label=label
    )
    if errors and not partial:
        raise BulkError(errors)
    store_rows(conn, org.id, rows)
    report = ImportReport(
        rows=len(items),
        customers=len({r.customer_id for r in rows}),
        subscriptions=len(rows),
        invalid_phones=sum(1 for r in rows if r.phone_e164 is None),
        errors=[message for _, message in errors],
    )
    return report, errors

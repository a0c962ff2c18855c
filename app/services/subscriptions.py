"""Reading customers and subscriptions, and changing one: through the import's code path.

An update is the stored row with the changes laid over it, upserted like one CSV line, so a
renewal or a cancellation is checked exactly as an import checks it. The send path re-checks
each row against today's subscription just before it sends (``app.domain.rules``), so a change
stored here is effective for the very next send, even one already planned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, select

from app.db.models import Customer, Subscription
from app.errors import NotFoundError, ValidationError
from app.services.importer import OPTIONAL, REQUIRED, upsert_items
from app.services.orgs import get_org

_COLUMNS = (
    Subscription.external_id,
    Customer.external_id,
    Customer.name,
    Customer.phone,
    Customer.phone_e164,
    Customer.phone_error,
    Subscription.plan,
    Subscription.expires_on,
    Subscription.amount,
    Subscription.currency,
    Subscription.status,
)
FIELDS = (
    "subscription_id",
    "customer_id",
    "name",
    "phone",
    "phone_e164",
    "phone_error",
    "plan",
    "expires_on",
    "amount",
    "currency",
    "status",
)


def _shown(row: Any) -> dict[str, Any]:
    out = dict(zip(FIELDS, row, strict=True))
    out["expires_on"] = out["expires_on"].isoformat()
    out["amount"] = None if out["amount"] is None else str(out["amount"])
    return out


def list_subscriptions(
    conn: Connection, slug: str, *, after: str | None, limit: int, customer: str | None = None
) -> list[dict[str, Any]]:
    org = get_org(conn, slug)
    stmt = (
        select(*_COLUMNS)
        .join(Customer, Customer.id == Subscription.customer_id)
        .where(Subscription.org_id == org.id)
        .order_by(Subscription.external_id)
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(Subscription.external_id > after)
    if customer is not None:
        stmt = stmt.where(Customer.external_id == customer)
    return [_shown(r) for r in conn.execute(stmt)]


def get_subscription(conn: Connection, slug: str, external_id: str) -> dict[str, Any]:
    org = get_org(conn, slug)
    row = conn.execute(
        select(*_COLUMNS)
        .join(Customer, Customer.id == Subscription.customer_id)
        .where(Subscription.org_id == org.id, Subscription.external_id == external_id)
    ).first()
    if row is None:
        raise NotFoundError(f"no subscription {external_id!r} in {slug}")
    return _shown(row)


def _as_item(stored: Mapping[str, Any], changes: Mapping[str, str | None]) -> dict[str, str | None]:
    """A stored subscription as an import item (a CSV line's columns), with changes laid over."""
    item = {k: None if stored[k] is None else str(stored[k]) for k in (*REQUIRED, *OPTIONAL)}
    item.update(changes)
    return item


def update_subscription(
    conn: Connection, slug: str, external_id: str, changes: Mapping[str, str | None]
) -> dict[str, Any]:
    """Renew (a new ``expires_on``), cancel (``status``), or change plan or amount."""
    current = get_subscription(conn, slug, external_id)
    upsert_items(conn, slug, [_as_item(current, changes)], label="subscription")
    return get_subscription(conn, slug, external_id)


def list_customers(
    conn: Connection, slug: str, *, after: str | None, limit: int
) -> list[dict[str, Any]]:
    org = get_org(conn, slug)
    stmt = (
        select(Customer.external_id, Customer.name, Customer.phone, Customer.phone_e164)
        .where(Customer.org_id == org.id)
        .order_by(Customer.external_id)
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(Customer.external_id > after)
    return [
        {"customer_id": c, "name": n, "phone": p, "phone_e164": e}
        for c, n, p, e in conn.execute(stmt)
    ]


def get_customer(conn: Connection, slug: str, external_id: str) -> dict[str, Any]:
    org = get_org(conn, slug)
    row = conn.execute(
        select(Customer.external_id, Customer.name, Customer.phone, Customer.phone_e164).where(
            Customer.org_id == org.id, Customer.external_id == external_id
        )
    ).first()
    if row is None:
        raise NotFoundError(f"no customer {external_id!r} in {slug}")
    subs = list_subscriptions(conn, slug, after=None, limit=10_000, customer=external_id)
    return {
        "customer_id": row[0],
        "name": row[1],
        "phone": row[2],
        "phone_e164": row[3],
        "subscriptions": subs,
    }


def update_customer(
    conn: Connection, slug: str, external_id: str, changes: Mapping[str, str | None]
) -> dict[str, Any]:
    """Change a customer's name or phone: their subscriptions' rows are upserted again with the
    change, through the import's checks (a number that is not valid is stored and gets no text,
    as on import)."""
    current = get_customer(conn, slug, external_id)
    subs = current["subscriptions"]
    if not subs:
        raise ValidationError(f"customer {external_id!r}: has no subscription to update through")
    upsert_items(conn, slug, [_as_item(sub, changes) for sub in subs], label="customer")
    return get_customer(conn, slug, external_id)

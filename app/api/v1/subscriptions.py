"""Customers and subscriptions: bulk upsert by external ids (the CSV import's code path), read
one, update one (renew, cancel); customers read."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import Engine

from app.api import pages
from app.api.deps import CallerDep, EngineDep, OrgInPath
from app.api.problems import Problem, responses
from app.services import subscriptions as subs
from app.services.importer import BulkError, upsert_items

router = APIRouter(prefix="/organizations/{slug}", tags=["subscriptions"], dependencies=[OrgInPath])

MAX_ITEMS = 10_000
Text = Annotated[str, Field(max_length=1000)]
Amount = Annotated[int | float | str, Field(description="e.g. 49.90")]


class SubscriptionItem(BaseModel):
    """One subscription with its customer: the columns of a `reminders import` CSV line."""

    customer_id: Text
    name: Text
    phone: Text
    subscription_id: Text
    plan: Text
    expires_on: Text = Field(description="YYYY-MM-DD")
    amount: Amount | None = None
    currency: Text | None = None
    status: Text | None = Field(None, description="active (default) or cancelled")


class Bulk(BaseModel):
    items: list[SubscriptionItem] = Field(max_length=MAX_ITEMS)


class ItemError(BaseModel):
    index: int
    reason: str


class BulkResult(BaseModel):
    received: int
    stored: int
    customers: int
    invalid_phones: int = Field(description="Stored, but they get no text")
    errors: list[ItemError]


class SubscriptionOut(BaseModel):
    subscription_id: str
    customer_id: str
    name: str
    phone: str
    phone_e164: str | None
    phone_error: str | None
    plan: str
    expires_on: date
    amount: str | None
    currency: str | None
    status: str


class SubscriptionPatch(BaseModel):
    expires_on: Text | None = Field(None, description="A renewal: the new expiry, YYYY-MM-DD")
    status: Literal["active", "cancelled"] | None = None
    plan: Text | None = None
    amount: Amount | None = None
    currency: Text | None = None


class CustomerPatch(BaseModel):
    name: Text | None = None
    phone: Text | None = Field(None, description="E.164, or national for the org's country")


class CustomerOut(BaseModel):
    customer_id: str
    name: str
    phone: str
    phone_e164: str | None


class CustomerDetail(CustomerOut):
    subscriptions: list[SubscriptionOut]


def _listed(
    engine: Engine,
    slug: str,
    cursor: str | None,
    limit: int,
    fetch: Callable[..., list[dict[str, Any]]],
    key: str,
) -> dict[str, Any]:
    """A page of an organization's rows, keyed by an external id (the router has checked the
    caller may see the organization: OrgInPath)."""
    after = pages.decode_as(cursor, str)
    with engine.connect() as conn:
        found = fetch(conn, slug, after=after, limit=limit + 1)
    return pages.page(found, limit, lambda row: row[key])


def _as_text(value: Any) -> str | None:
    return None if value is None else str(value)


@router.post(
    "/subscriptions",
    response_model=BulkResult,
    summary="Upsert up to 10,000 subscriptions (and their customers) by external ids",
    description="All or nothing: one bad item stores nothing and the answer (422) lists every "
    "bad item's index and reason. With `?partial=true` the good items are stored and the bad "
    "ones listed.",
    responses=responses(401, 404, 413, 422),
)
def upsert_subscriptions(
    slug: str,
    body: Bulk,
    who: CallerDep,
    engine: EngineDep,
    partial: Annotated[bool, Query(description="Store the good items, list the bad")] = False,
) -> Any:
    items = [{k: _as_text(v) for k, v in item.model_dump().items()} for item in body.items]
    try:
        with engine.begin() as conn:
            report, errors = upsert_items(conn, slug, items, partial=partial)
    except BulkError as exc:
        listed = [{"index": i, "reason": reason} for i, reason in exc.errors]
        raise Problem(422, str(exc), errors=listed) from None
    return {
        "received": report.rows,
        "stored": report.subscriptions,
        "customers": report.customers,
        "invalid_phones": report.invalid_phones,
        "errors": [{"index": i, "reason": reason} for i, reason in errors],
    }


@router.get(
    "/subscriptions",
    response_model=pages.Page[SubscriptionOut],
    summary="Subscriptions, by external id",
    responses=responses(401, 404, 422),
)
def list_subscriptions(
    slug: str,
    who: CallerDep,
    engine: EngineDep,
    cursor: pages.Cursor = None,
    limit: pages.Limit = 100,
) -> Any:
    return _listed(engine, slug, cursor, limit, subs.list_subscriptions, "subscription_id")


@router.get(
    "/subscriptions/{subscription_id}",
    response_model=SubscriptionOut,
    summary="One subscription",
    responses=responses(401, 404),
)
def read_subscription(slug: str, subscription_id: str, who: CallerDep, engine: EngineDep) -> Any:
    with engine.connect() as conn:
        return subs.get_subscription(conn, slug, subscription_id)


@router.patch(
    "/subscriptions/{subscription_id}",
    response_model=SubscriptionOut,
    summary="Renew (new expires_on) or cancel (status cancelled): effective for the next send",
    responses=responses(401, 404, 422),
)
def update_subscription(
    slug: str, subscription_id: str, body: SubscriptionPatch, who: CallerDep, engine: EngineDep
) -> Any:
    changes = {k: _as_text(v) for k, v in body.model_dump(exclude_unset=True).items()}
    with engine.begin() as conn:
        return subs.update_subscription(conn, slug, subscription_id, changes)


@router.get(
    "/customers",
    response_model=pages.Page[CustomerOut],
    summary="Customers, by external id",
    responses=responses(401, 404, 422),
)
def list_customers(
    slug: str,
    who: CallerDep,
    engine: EngineDep,
    cursor: pages.Cursor = None,
    limit: pages.Limit = 100,
) -> Any:
    return _listed(engine, slug, cursor, limit, subs.list_customers, "customer_id")


@router.get(
    "/customers/{customer_id}",
    response_model=CustomerDetail,
    summary="One customer, with their subscriptions",
    responses=responses(401, 404),
)
def read_customer(slug: str, customer_id: str, who: CallerDep, engine: EngineDep) -> Any:
    with engine.connect() as conn:
        return subs.get_customer(conn, slug, customer_id)


@router.patch(
    "/customers/{customer_id}",
    response_model=CustomerDetail,
    summary="Change a customer's name or phone (checked as an import checks it)",
    responses=responses(401, 404, 422),
)
def update_customer(
    slug: str, customer_id: str, body: CustomerPatch, who: CallerDep, engine: EngineDep
) -> Any:
    changes = {k: _as_text(v) for k, v in body.model_dump(exclude_unset=True).items()}
    with engine.begin() as conn:
        return subs.update_customer(conn, slug, customer_id, changes)

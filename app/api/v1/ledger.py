"""What the service did: messages (the ledger's rows), counts per status, opt-outs."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import select

from app.api import pages
from app.api.deps import CallerDep, EngineDep, OrgInPath, visible_org
from app.api.problems import Problem, responses
from app.db import ledger
from app.db.models import OptOut
from app.domain.planning import utcnow
from app.domain.status import Status
from app.services import orgs as org_service
from app.services import runner

router = APIRouter(prefix="/organizations/{slug}", tags=["messages"], dependencies=[OrgInPath])


class MessageOut(BaseModel):
    id: int
    org: str
    customer_id: str
    subscription_id: str
    phone: str | None
    lead_days: int
    days_left: int
    expires_on: date
    local_date: date
    status: Status
    reason: str | None
    body: str | None
    template_fallback: str | None
    segments: int | None
    encoding: str | None
    attempts: int
    error_code: str | None
    error_message: str | None
    provider_message_id: str | None
    delivery_status: str | None
    next_attempt_at: datetime | None
    sent_at: datetime | None


class StatusCounts(BaseModel):
    organization: str
    date: date | None
    counts: dict[str, int] = Field(description="Rows per status (every status, 0 included)")


class OptOutIn(BaseModel):
    phone: str = Field(max_length=64, description="E.164, or national for the org's country")


class OptOutOut(BaseModel):
    phone_e164: str
    source: str
    created_at: datetime


class OptOutChange(BaseModel):
    phone_e164: str
    opted_out: bool
    changed: bool


@router.get(
    "/messages",
    response_model=pages.Page[MessageOut],
    summary="The ledger's rows: body, status, attempts, provider id, delivery status",
    responses=responses(401, 404, 422),
)
def list_messages(
    slug: str,
    who: CallerDep,
    engine: EngineDep,
    on_date: Annotated[date | None, Query(alias="date", description="Planned for this day")] = None,
    status: Status | None = None,
    customer_id: Annotated[str | None, Query(max_length=100)] = None,
    subscription_id: Annotated[str | None, Query(max_length=100)] = None,
    cursor: pages.Cursor = None,
    limit: pages.Limit = 100,
) -> Any:
    after = pages.decode_as(cursor, int)  # the organization was checked (OrgInPath)
    found = runner.messages(
        engine,
        on_date=on_date,
        slug=slug,
        status=status.value if status else None,
        customer=customer_id,
        subscription=subscription_id,
        after_id=after,
        limit=limit + 1,
    )
    return pages.page(found, limit, lambda m: m["id"])


@router.get(
    "/messages/{message_id}",
    response_model=MessageOut,
    summary="One message",
    responses=responses(401, 404, 422),
)
def read_message(slug: str, message_id: int, who: CallerDep, engine: EngineDep) -> Any:
    found = runner.messages(engine, slug=slug, row_id=message_id)
    if not found:
        raise Problem(404, f"no message {message_id} in {slug}")
    return found[0]


@router.get(
    "/status",
    response_model=StatusCounts,
    summary="Counts per status (for one day)",
    responses=responses(401, 404, 422),
)
def status_counts(
    slug: str,
    who: CallerDep,
    engine: EngineDep,
    on_date: Annotated[date | None, Query(alias="date", description="Planned for this day")] = None,
) -> Any:
    with engine.connect() as conn:
        org = visible_org(conn, who, slug)
        counts = ledger.count_by_status(conn, org_ids=[org.id], local_date=on_date)
    by_status = {s.value: 0 for s in Status}
    for (_org, status), n in counts.items():
        by_status[status] = n
    return {"organization": slug, "date": on_date, "counts": by_status}


@router.get(
    "/opt-outs",
    response_model=pages.Page[OptOutOut],
    summary="Numbers that get no texts from this organization",
    responses=responses(401, 404, 422),
)
def list_opt_outs(
    slug: str,
    who: CallerDep,
    engine: EngineDep,
    cursor: pages.Cursor = None,
    limit: pages.Limit = 100,
) -> Any:
    after = pages.decode_as(cursor, str)
    with engine.connect() as conn:
        org = visible_org(conn, who, slug)
        stmt = (
            select(OptOut.phone_e164, OptOut.source, OptOut.created_at)
            .where(OptOut.org_id == org.id)
            .order_by(OptOut.phone_e164)
            .limit(limit + 1)
        )
        if after is not None:
            stmt = stmt.where(OptOut.phone_e164 > after)
        found = [{"phone_e164": p, "source": s, "created_at": c} for p, s, c in conn.execute(stmt)]
    return pages.page(found, limit, lambda o: o["phone_e164"])


def _set(slug: str, phone: str, engine: Any, *, opted_out: bool) -> dict[str, Any]:
    with engine.begin() as conn:
        e164, changed = org_service.set_opt_out(
            conn, slug, phone, opted_out=opted_out, now=utcnow(), source="api"
        )
    return {"phone_e164": e164, "opted_out": opted_out, "changed": changed}


@router.post(
    "/opt-outs",
    response_model=OptOutChange,
    summary="Stop texting this number (an operator's opt-out: a START does not lift it)",
    responses=responses(401, 404, 422),
)
def add_opt_out(slug: str, body: OptOutIn, who: CallerDep, engine: EngineDep) -> Any:
    return _set(slug, body.phone, engine, opted_out=True)


@router.delete(
    "/opt-outs/{phone}",
    response_model=OptOutChange,
    summary="Allow texts to this number again",
    responses=responses(401, 404, 422),
)
def remove_opt_out(slug: str, phone: str, who: CallerDep, engine: EngineDep) -> Any:
    return _set(slug, phone, engine, opted_out=False)

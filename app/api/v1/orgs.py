"""Organizations: created by an admin key; read and updated by their own key too."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api import pages
from app.api.deps import AdminDep, CallerDep, EngineDep, OrgInPath, SettingsDep, visible_org
from app.api.problems import responses
from app.db.models import Organization
from app.domain.planning import utcnow
from app.services import orgs as org_service

router = APIRouter(prefix="/organizations", tags=["organizations"])

LeadDays = list[int] | str


class OrgIn(BaseModel):
    slug: str = Field(max_length=64)
    name: str = Field(max_length=200)
    timezone: str = Field(max_length=64, description="IANA zone, e.g. Europe/Paris")
    send_time: str | None = Field(None, max_length=5, description="HH:MM")
    send_window: str | None = Field(None, max_length=11, description="HH:MM-HH:MM")
    lead_days: LeadDays | None = Field(None, description="[5, 3, 1] or '5,3,1'")
    country: str | None = Field(None, max_length=2)
    sender: str | None = Field(None, max_length=64)
    rate: float | None = Field(None, description="Segments per second for this sender")


class OrgPatch(BaseModel):
    name: str | None = Field(None, max_length=200)
    send_time: str | None = Field(None, max_length=5)
    send_window: str | None = Field(None, max_length=11)
    lead_days: LeadDays | None = None
    country: str | None = Field(None, max_length=2)
    sender: str | None = Field(None, max_length=64)
    rate: float | None = None


class OrgOut(BaseModel):
    slug: str
    name: str
    timezone: str
    send_time: str
    send_window: str
    lead_days: list[int]
    country: str
    sender: str | None
    rate: float | None
    active: bool


def _leads(value: LeadDays | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return ",".join(str(v) for v in value) or ","


@router.post(
    "",
    status_code=201,
    response_model=OrgOut,
    summary="Create an organization (admin key)",
    responses=responses(401, 403, 422),
)
def create_org(body: OrgIn, _admin: AdminDep, engine: EngineDep, s: SettingsDep) -> Any:
    data = org_service.OrgInput(**{**body.model_dump(), "lead_days": _leads(body.lead_days)})
    with engine.begin() as conn:
        org = org_service.add_org(conn, data, settings=s, now=utcnow())
    return org_service.org_dict(org)


@router.get(
    "",
    response_model=pages.Page[OrgOut],
    summary="Organizations this key may see",
    responses=responses(401, 422),
)
def list_orgs(
    who: CallerDep, engine: EngineDep, cursor: pages.Cursor = None, limit: pages.Limit = 100
) -> Any:
    after = pages.decode_as(cursor, str)
    stmt = select(Organization).order_by(Organization.slug).limit(limit + 1)
    if after is not None:
        stmt = stmt.where(Organization.slug > after)
    if not who.admin:
        stmt = stmt.where(Organization.id == who.org_id)
    with engine.connect() as conn:
        found = [org_service.org_dict(o) for o in Session(bind=conn).scalars(stmt)]
    return pages.page(found, limit, lambda o: o["slug"])


@router.get(
    "/{slug}",
    response_model=OrgOut,
    dependencies=[OrgInPath],
    summary="One organization",
    responses=responses(401, 404),
)
def read_org(slug: str, who: CallerDep, engine: EngineDep) -> Any:
    with engine.connect() as conn:
        return org_service.org_dict(visible_org(conn, who, slug))


@router.patch(
    "/{slug}",
    response_model=OrgOut,
    dependencies=[OrgInPath],
    summary="Change send time, window, lead days, country, sender or rate",
    responses=responses(401, 404, 422),
)
def update_org(slug: str, body: OrgPatch, who: CallerDep, engine: EngineDep, s: SettingsDep) -> Any:
    # An explicit null clears the sender or the rate; for the rest it changes nothing.
    changes = {
        k: v
        for k, v in body.model_dump(exclude_unset=True).items()
        if v is not None or k in ("sender", "rate")
    }
    if "lead_days" in changes:
        changes["lead_days"] = _leads(body.lead_days)
    with engine.begin() as conn:
        org = org_service.patch_org(conn, slug, changes, settings=s)
    return org_service.org_dict(org)

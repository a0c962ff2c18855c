"""Templates per organization and lead day: put (checked exactly as `template set`), read (with
where it comes from), preview (text, length, segments, encoding)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from app.api.deps import CallerDep, EngineDep, OrgInPath, SettingsDep, visible_org
from app.api.problems import responses
from app.domain.planning import utcnow
from app.domain.templates import Preview
from app.services import orgs as org_service

router = APIRouter(
    prefix="/organizations/{slug}/templates", tags=["templates"], dependencies=[OrgInPath]
)

Lead = Annotated[
    str,
    Path(
        pattern=r"^(default|[0-9]{1,3})$",
        description="A lead day (0-365), or `default` for the organization-wide template",
    ),
]


class TemplateIn(BaseModel):
    body: str = Field(min_length=1, max_length=5000, description="Jinja2 (sandboxed)")


class PreviewOut(BaseModel):
    lead_days: int
    text: str
    length: int
    segments: int
    encoding: str
    non_gsm_chars: list[str]


class TemplateOut(BaseModel):
    lead: str
    body: str
    source: str = Field(description="Where it comes from: the lead day's, the default, built-in")


class TemplateSaved(TemplateOut):
    previews: list[PreviewOut]


def _lead(raw: str) -> int | None:
    return None if raw == "default" else int(raw)


def _preview(p: Preview, lead_days: int) -> dict[str, Any]:
    return {
        "lead_days": lead_days,
        "text": p.body,
        "length": p.length,
        "segments": p.segments.segments,
        "encoding": p.segments.encoding,
        "non_gsm_chars": list(p.segments.non_gsm_chars),
    }


@router.put(
    "/{lead}",
    response_model=TemplateSaved,
    summary="Check a template as a send would use it, then store it (422: nothing changes)",
    responses=responses(401, 404, 422),
)
def put_template(
    slug: str, lead: Lead, body: TemplateIn, who: CallerDep, engine: EngineDep, s: SettingsDep
) -> Any:
    days = _lead(lead)
    with engine.begin() as conn:
        org = visible_org(conn, who, slug)
        previews = org_service.set_template(
            conn, slug, body.body.strip(), lead=days, settings=s, now=utcnow()
        )
        source, origin = org_service.template_source(conn, slug, lead=days)
    leads = [days] if days is not None else list(org.leads)
    return {
        "lead": lead,
        "body": source,
        "source": origin,
        "previews": [_preview(p, d) for p, d in zip(previews, leads, strict=True)],
    }


@router.get(
    "/{lead}",
    response_model=TemplateOut,
    summary="The template a text for this lead day uses, and where it comes from",
    responses=responses(401, 404, 422),
)
def read_template(slug: str, lead: Lead, who: CallerDep, engine: EngineDep) -> Any:
    with engine.connect() as conn:
        source, origin = org_service.template_source(conn, slug, lead=_lead(lead))
    return {"lead": lead, "body": source, "source": origin}


@router.get(
    "/{lead}/preview",
    response_model=PreviewOut,
    summary="The template rendered with sample data: text, length, segments, encoding",
    responses=responses(401, 404, 422),
)
def preview_template(slug: str, lead: Lead, who: CallerDep, engine: EngineDep) -> Any:
    days = _lead(lead)
    with engine.connect() as conn:
        org = visible_org(conn, who, slug)
        p, _origin = org_service.preview(conn, slug, lead=days)
    return _preview(p, days if days is not None else max(org.leads))

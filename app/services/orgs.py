"""Organizations, their templates and opt-out lists."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.orm import Session

from app.db import ledger
from app.db.models import DEFAULT_TEMPLATE_LEAD, OptOut, Organization, Template
from app.domain import planning
from app.domain.phones import InvalidPhone, normalize_phone
from app.domain.templates import DEFAULT_TEMPLATE, Preview, sample_render, validate_template
from app.errors import NotFoundError, ValidationError
from app.settings import Settings, parse_clock, parse_lead_days, parse_window

SLUG_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True)
class OrgInput:
    slug: str
    name: str
    timezone: str
    send_time: str | None = None
    send_window: str | None = None
    lead_days: str | None = None
    country: str | None = None
    sender: str | None = None
    rate: float | None = None


def _parsed(label: str, parse: object, raw: str) -> object:
    try:
        return parse(raw)  # type: ignore[operator]
    except ValueError as exc:
        raise ValidationError(f"{label}: {exc}") from None


def _validated(data: OrgInput, *, settings: Settings, now: datetime) -> Organization:
    """Every field checked, defaults filled in: the organization as it would be stored."""
    slug = data.slug.strip().lower()
    if not slug or not set(slug) <= SLUG_CHARS or len(slug) > 64:
        raise ValidationError(f"slug {data.slug!r}: use lowercase letters, digits, - and _")
    if not data.name.strip():
        raise ValidationError("--name: must not be empty")
    try:
        planning.zone(data.timezone)
    except ValidationError as exc:
        raise ValidationError(f"--timezone: {exc}") from None
    send_time = (
        _parsed("--send-time", parse_clock, data.send_time)
        if data.send_time
        else settings.send_time
    )
    window = (
        _parsed("--send-window", parse_window, data.send_window)
        if data.send_window
        else settings.send_window
    )
    assert isinstance(send_time, time) and isinstance(window, tuple)
    if not planning.in_window(send_time, window):
        raise ValidationError(
            f"--send-time {send_time:%H:%M} is outside --send-window "
            f"{window[0]:%H:%M}-{window[1]:%H:%M}: the day's texts would all wait for the next "
            "morning; choose a send time inside the window"
        )
    leads = (
        _parsed("--lead-days", parse_lead_days, data.lead_days)
        if data.lead_days
        else settings.lead_days
    )
    country = (data.country or settings.default_country).strip().upper()
    if len(country) != 2 or not country.isalpha():
        raise ValidationError(f"--country {data.country!r}: expected a two-letter code like US")
    if data.rate is not None and not data.rate > 0:
        raise ValidationError(f"--rate {data.rate}: must be above 0 messages per second")
    assert isinstance(leads, tuple)
    return Organization(
        slug=slug,
        name=data.name.strip()[:200],
        timezone=data.timezone,
        send_time=send_time,
        window_start=window[0],  # type: ignore[index]
        window_end=window[1],  # type: ignore[index]
        lead_days=",".join(str(x) for x in leads),
        country=country,
        sender=(data.sender or "").strip()[:64] or None,
        rate_per_second=data.rate,
        active=True,
        created_at=now,
    )


def add_org(conn: Connection, data: OrgInput, *, settings: Settings, now: datetime) -> Organization:
    """Create an organization; every field is checked first so nothing half-made is stored."""
    org = _validated(data, settings=settings, now=now)
    if conn.execute(select(Organization.id).where(Organization.slug == org.slug)).first():
        raise ValidationError(f"organization {org.slug!r} already exists")
    values = {c.key: getattr(org, c.key) for c in Organization.__table__.columns if c.key != "id"}
    inserted = conn.execute(insert(Organization).values(**values)).inserted_primary_key
    assert inserted is not None
    org.id = inserted[0]
    return org


#: What an update may change (the time zone stays: it decides which day a row belongs to).
UPDATABLE = ("name", "send_time", "send_window", "lead_days", "country", "sender", "rate")


def update_org(
    conn: Connection, slug: str, changes: dict[str, object], *, settings: Settings, now: datetime
) -> Organization:
    """Change some of an organization's settings, checked exactly as ``add_org`` checks them
    (the result as a whole: a new send time must fit the window in force)."""
    unknown = sorted(set(changes) - set(UPDATABLE))
    if unknown:
        raise ValidationError(f"{', '.join(unknown)}: cannot be changed")
    current = get_org(conn, slug)
    merged = OrgInput(
        slug=current.slug,
        name=str(changes.get("name", current.name)),
        timezone=current.timezone,
        send_time=str(changes.get("send_time") or f"{current.send_time:%H:%M}"),
        send_window=str(
            changes.get("send_window") or f"{current.window_start:%H:%M}-{current.window_end:%H:%M}"
        ),
        lead_days=str(changes.get("lead_days") or current.lead_days),
        country=str(changes.get("country") or current.country),
        sender=str(changes["sender"] or "") if "sender" in changes else current.sender,
        rate=changes.get("rate", current.rate_per_second),  # type: ignore[arg-type]
    )
    org = _validated(merged, settings=settings, now=current.created_at)
    values = {c: getattr(org, c) for c in ("name", "send_time", "window_start", "window_end")}
    values.update(
        lead_days=org.lead_days,
        country=org.country,
        sender=org.sender,
        rate_per_second=org.rate_per_second,
    )
    conn.execute(update(Organization).where(Organization.id == current.id).values(**values))
    return get_org(conn, slug)


def get_org(conn: Connection, slug: str) -> Organization:
    org = Session(bind=conn).scalars(select(Organization).where(Organization.slug == slug)).first()
    if org is None:
        raise NotFoundError(f"no organization {slug!r}; see `reminders org list`")
    return org


def list_orgs(conn: Connection) -> list[Organization]:
    return list(Session(bind=conn).scalars(select(Organization).order_by(Organization.slug)))


def org_dict(org: Organization) -> dict[str, object]:
    return {
        "slug": org.slug,
        "name": org.name,
        "timezone": org.timezone,
        "send_time": org.send_time.strftime("%H:%M"),
        "send_window": f"{org.window_start:%H:%M}-{org.window_end:%H:%M}",
        "lead_days": list(org.leads),
        "country": org.country,
        "sender": org.sender,
        "rate": org.rate_per_second,
        "active": org.active,
    }


def _template_lead(lead: int | None) -> int:
    if lead is None:
        return DEFAULT_TEMPLATE_LEAD
    if lead < 0 or lead > 365:
        raise ValidationError(f"--lead {lead}: must be between 0 and 365")
    return lead


def set_template(
    conn: Connection,
    slug: str,
    source: str,
    *,
    lead: int | None,
    settings: Settings,
    now: datetime,
) -> list[Preview]:
    """Check the template as a send would use it, then store it (refused: nothing changes)."""
    org = get_org(conn, slug)
    leads = [lead] if lead is not None else list(org.leads)
    previews = validate_template(
        source, organization_name=org.name, lead_days=leads, max_segments=settings.max_segments
    )
    key = _template_lead(lead)
    conn.execute(delete(Template).where(Template.org_id == org.id, Template.lead_days == key))
    conn.execute(insert(Template).values(org_id=org.id, lead_days=key, body=source, updated_at=now))
    return previews


def template_source(conn: Connection, slug: str, *, lead: int | None) -> tuple[str, str]:
    """The template a text for this lead day would use, and where it comes from."""
    org = get_org(conn, slug)
    found = {
        lead_days: body
        for lead_days, body in conn.execute(
            select(Template.lead_days, Template.body).where(Template.org_id == org.id)
        )
    }
    if lead is not None and lead in found:
        return found[lead], f"{slug}, lead day {lead}"
    if DEFAULT_TEMPLATE_LEAD in found:
        return found[DEFAULT_TEMPLATE_LEAD], f"{slug} default"
    return DEFAULT_TEMPLATE, "built-in default"


def preview(conn: Connection, slug: str, *, lead: int | None) -> tuple[Preview, str]:
    org = get_org(conn, slug)
    lead_days = lead if lead is not None else max(org.leads)
    source, origin = template_source(conn, slug, lead=lead_days)
    return sample_render(source, organization_name=org.name, lead_days=lead_days), origin


def set_opt_out(
    conn: Connection, slug: str, phone: str, *, opted_out: bool, now: datetime, source: str = "cli"
) -> tuple[str, bool]:
    """Opt a number out (or back in). Returns the normalized number and whether it changed."""
    org = get_org(conn, slug)
    try:
        e164 = normalize_phone(phone, org.country)
    except InvalidPhone as exc:
        raise ValidationError(str(exc)) from None
    if opted_out:
        changed = ledger.add_opt_out(conn, org_id=org.id, phone_e164=e164, source=source, now=now)
    else:
        result = conn.execute(
            delete(OptOut).where(OptOut.org_id == org.id, OptOut.phone_e164 == e164)
        )
        changed = (result.rowcount or 0) > 0
    return e164, changed

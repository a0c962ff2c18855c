"""Organizations, their templates and opt-out lists."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.orm import Session

from app.db import ledger, undeliverable
from app.db.models import DEFAULT_TEMPLATE_LEAD, Organization, Template
from app.domain import planning
from app.domain.countries import check_country, zone_country
from app.domain.phones import InvalidPhone, normalize_phone
from app.domain.smart_encoding import smart_encode
from app.domain.templates import DEFAULT_TEMPLATE, Preview, sample_render, validate_template
from app.errors import NotFoundError, ValidationError
from app.settings import Settings, get_settings, parse_clock, parse_lead_days, parse_window

T = TypeVar("T")
SLUG_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True)
class OrgInput:
    """What `org add` and `org set` were given; None: not given (add: the default, set: as is)."""

    slug: str
    name: str | None = None
    timezone: str | None = None
    send_time: str | None = None
    send_window: str | None = None
    lead_days: str | None = None
    country: str | None = None
    sender: str | None = None
    rate: float | None = None


def _parsed(label: str, parse: Callable[[str], T], raw: str) -> T:
    try:
        return parse(raw)
    except ValueError as exc:
        raise ValidationError(f"{label}: {exc}") from None


def _default_country(timezone: str, settings: Settings) -> str:
    """The zone's one country, else REMINDER_DEFAULT_COUNTRY, else the operator must say."""
    country = zone_country(timezone) or settings.default_country
    if country is None:
        raise ValidationError(
            f"--country: the time zone {timezone} names no one country, so national numbers "
            "could be read wrong; give --country (e.g. --country US) or set "
            "REMINDER_DEFAULT_COUNTRY"
        )
    return country


def _columns(data: OrgInput, base: Organization | None, settings: Settings) -> dict[str, Any]:
    """The organization's columns after ``data`` (on top of ``base`` for `org set`), every
    field checked first so nothing half-made is stored."""
    values: dict[str, Any] = {}
    if data.name is not None:
        if not data.name.strip():
            raise ValidationError("--name: must not be empty")
        values["name"] = data.name.strip()
    if data.timezone is not None:
        try:
            planning.zone(data.timezone)
        except ValidationError as exc:
            raise ValidationError(f"--timezone: {exc}") from None
        values["timezone"] = data.timezone
    timezone = values.get("timezone") or (base.timezone if base else "UTC")
    send_time = (
        _parsed("--send-time", parse_clock, data.send_time)
        if data.send_time is not None
        else (base.send_time if base else settings.send_time)
    )
    window = (
        _parsed("--send-window", parse_window, data.send_window)
        if data.send_window is not None
        else ((base.window_start, base.window_end) if base else settings.send_window)
    )
    if not planning.in_window(send_time, window):
        raise ValidationError(
            f"--send-time {send_time:%H:%M} is outside --send-window "
            f"{window[0]:%H:%M}-{window[1]:%H:%M}: the day's texts would all wait for the next "
            "morning; choose a send time inside the window"
        )
    values.update(send_time=send_time, window_start=window[0], window_end=window[1])
    if data.lead_days is not None:
        leads = _parsed("--lead-days", parse_lead_days, data.lead_days)
        values["lead_days"] = ",".join(str(x) for x in leads)
    elif base is None:
        values["lead_days"] = ",".join(str(x) for x in settings.lead_days)
    if data.country is not None:
        values["country"] = _parsed("--country", check_country, data.country)
    elif base is None:
        values["country"] = _default_country(timezone, settings)
    if data.sender is not None:
        values["sender"] = data.sender.strip() or None
    if data.rate is not None:
        if not math.isfinite(data.rate) or data.rate <= 0:
            raise ValidationError(
                f"--rate {data.rate}: must be a number above 0 (message segments per second)"
            )
        values["rate_per_second"] = data.rate
    return values


def _slug(raw: str) -> str:
    slug = raw.strip().lower()
    if not slug or not set(slug) <= SLUG_CHARS or len(slug) > 64:
        raise ValidationError(f"slug {raw!r}: use lowercase letters, digits, - and _")
    return slug


def add_org(conn: Connection, data: OrgInput, *, settings: Settings, now: datetime) -> Organization:
    """Create an organization; every field is checked first so nothing half-made is stored."""
    slug = _slug(data.slug)
    if data.name is None or data.timezone is None:
        raise ValidationError("--name and --timezone are required for a new organization")
    values = _columns(data, None, settings)
    if conn.execute(select(Organization.id).where(Organization.slug == slug)).first():
        raise ValidationError(f"organization {slug!r} already exists")
    values.update(slug=slug, sender=values.get("sender"), active=True, created_at=now)
    values.setdefault("rate_per_second", None)
    inserted = conn.execute(insert(Organization).values(**values)).inserted_primary_key
    assert inserted is not None
    return get_org(conn, slug)


def update_org(conn: Connection, data: OrgInput, *, settings: Settings) -> Organization:
    """`org set`: change what was given, checked like `org add`; a refusal changes nothing."""
    org = get_org(conn, data.slug)
    values = _columns(data, org, settings)
    conn.execute(update(Organization).where(Organization.id == org.id).values(**values))
    return get_org(conn, org.slug)


def set_enabled(conn: Connection, slug: str, *, enabled: bool, now: datetime) -> bool:
    """`org disable|enable`: a disabled organization plans and sends nothing; its customers,
    templates and ledger stay. Returns whether anything changed."""
    org = get_org(conn, slug)
    if org.active == enabled:
        return False
    conn.execute(
        update(Organization)
        .where(Organization.id == org.id)
        .values(active=enabled, disabled_at=None if enabled else now)
    )
    return True


def disabled_slugs(conn: Connection, slugs: Sequence[str]) -> list[str]:
    """Which of these organizations exist but are disabled (`reminders org disable`)."""
    stmt = select(Organization.slug).where(
        Organization.active.is_(False), Organization.slug.in_(list(slugs))
    )
    return sorted(conn.execute(stmt).scalars())


#: What the API's PATCH may change (the time zone stays: it decides which day a row belongs to).
UPDATABLE = ("name", "send_time", "send_window", "lead_days", "country", "sender", "rate")


def patch_org(
    conn: Connection, slug: str, changes: dict[str, object], *, settings: Settings
) -> Organization:
    """The API's PATCH: ``update_org`` (`org set`) with these fields; a null sender or rate
    clears it."""
    unknown = sorted(set(changes) - set(UPDATABLE))
    if unknown:
        raise ValidationError(f"{', '.join(unknown)}: cannot be changed")
    given = {k: v for k, v in changes.items() if v is not None}
    if "sender" in changes and changes["sender"] is None:
        given["sender"] = ""
    rate = given.pop("rate", None)
    data = OrgInput(
        slug=slug,
        rate=float(rate) if isinstance(rate, int | float | str) else None,
        **{k: str(v) for k, v in given.items()},
    )
    org = update_org(conn, data, settings=settings)
    if "rate" in changes and changes["rate"] is None:
        conn.execute(
            update(Organization).where(Organization.id == org.id).values(rate_per_second=None)
        )
        org = get_org(conn, slug)
    return org


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
        "disabled_at": org.disabled_at.isoformat() if org.disabled_at else None,
    }


def _template_lead(lead: int | None) -> int:
    """The templates row key for ``--lead`` (the organization default when None)."""
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
    smart_encoding: bool = False,
) -> list[Preview]:
    """Check the template as a send would use it, then store it (refused: nothing changes).

    A byte-order mark at the start is dropped (an invisible character that would cost every
    text its GSM-7 encoding); ``smart_encoding`` replaces look-alike characters (’ “ – …) with
    their GSM-7 equivalents first.
    """
    org = get_org(conn, slug)
    key = _template_lead(lead)
    if lead is not None and lead not in org.leads:
        days = ",".join(str(d) for d in org.leads)
        raise ValidationError(
            f"--lead {lead}: {slug} sends on lead days {days}, so a template for day {lead} "
            "would never be used; choose one of them (or change the lead days first)"
        )
    source = source.removeprefix("\ufeff")
    if smart_encoding:
        source = smart_encode(source)
    leads = [lead] if lead is not None else list(org.leads)
    previews = validate_template(
        source,
        organization_name=org.name,
        lead_days=leads,
        max_segments=settings.max_segments,
        budget_ms=settings.template_render_budget_ms,
    )
    conn.execute(delete(Template).where(Template.org_id == org.id, Template.lead_days == key))
    conn.execute(insert(Template).values(org_id=org.id, lead_days=key, body=source, updated_at=now))
    return previews


def remove_template(conn: Connection, slug: str, *, lead: int | None) -> str:
    """Remove the organization's template for ``lead`` (its default when None): those texts go
    back to the fallback chain. Returns where they now come from."""
    org = get_org(conn, slug)
    key = _template_lead(lead)
    removed = conn.execute(
        delete(Template).where(Template.org_id == org.id, Template.lead_days == key)
    )
    if not removed.rowcount:
        which = f"lead day {lead}" if lead is not None else "all lead days (its default)"
        raise NotFoundError(
            f"{slug} has no template of its own for {which}; see `reminders template show {slug}`"
        )
    return template_source(conn, slug, lead=lead)[1]


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


def preview(
    conn: Connection, slug: str, *, lead: int | None, settings: Settings | None = None
) -> tuple[Preview, str]:
    """The sample text of the template in force for ``lead`` (default: the largest lead day),
    and where the template comes from."""
    settings = settings or get_settings()
    org = get_org(conn, slug)
    lead_days = lead if lead is not None else max(org.leads)
    source, origin = template_source(conn, slug, lead=lead_days)
    sample = sample_render(
        source,
        organization_name=org.name,
        lead_days=lead_days,
        budget_ms=settings.template_render_budget_ms,
    )
    return sample, origin


def clear_undeliverable(conn: Connection, slug: str, phone: str) -> tuple[str, bool]:
    """Lift a number's undeliverable mark (the operator knows it takes texts now). Returns the
    normalized number and whether it was marked."""
    org = get_org(conn, slug)
    try:
        e164 = normalize_phone(phone, org.country)
    except InvalidPhone as exc:
        raise ValidationError(str(exc)) from None
    return e164, undeliverable.clear(conn, org_id=org.id, phone_e164=e164)


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
        lifted = ledger.remove_opt_outs(
            conn, org_ids=[org.id], phone_e164=e164, source=source, now=now
        )
        changed = lifted > 0
    return e164, changed

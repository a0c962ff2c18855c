"""Event endpoints and the outbox as operators and hosts see them: the one code path of
``reminders endpoint …`` / ``reminders events …`` and the API's endpoint and event routes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import Connection, insert, select, update

from app.db import outbox
from app.db.models import Event, EventEndpoint, Organization
from app.domain import events
from app.domain.events import DeliveryStatus
from app.errors import NotFoundError, ValidationError
from app.services.event_delivery import RefusedAddress, check_host, resolve_public
from app.services.orgs import get_org
from app.settings import Settings


@dataclass(frozen=True)
class Endpoint:
    id: int
    organization: str
    url: str
    events: tuple[str, ...]
    created_at: datetime
    secret: str | None = None  # only when it is made: shown once


def add_endpoint(
    conn: Connection,
    slug: str,
    url: str,
    *,
    types: Sequence[str] | str | None,
    settings: Settings,
    now: datetime,
) -> Endpoint:
    """Register where ``slug``'s events go; the secret they are signed with is made here and
    returned this once."""
    org = get_org(conn, slug)
    # Each message names its input (``--events`` reads as ``events`` over HTTP).
    try:
        url = events.check_url(url)
    except ValueError as exc:
        raise ValidationError(f"url: {exc}") from None
    try:
        wanted = events.parse_types(types)
    except ValueError as exc:
        raise ValidationError(f"--events: {exc}") from None
    host = urlsplit(url).hostname or ""
    if not settings.events_allow_private:
        try:
            check_host(host, allow_private=False)
            resolve_public(host)
        except RefusedAddress as exc:
            raise ValidationError(f"url: {exc}") from None
    secret = events.new_secret()
    new_id = conn.execute(
        insert(EventEndpoint)
        .values(
            org_id=org.id,
            url=url,
            secret=secret,
            event_types=",".join(wanted),
            created_at=now,
        )
        .returning(EventEndpoint.id)
    ).scalar_one()
    return Endpoint(new_id, slug, url, wanted, now, secret)


def list_endpoints(conn: Connection, slug: str | None = None) -> list[Endpoint]:
    """Live endpoints (of one organization), oldest first; no secrets."""
    stmt = (
        select(
            EventEndpoint.id,
            Organization.slug,
            EventEndpoint.url,
            EventEndpoint.event_types,
            EventEndpoint.created_at,
        )
        .join(Organization, Organization.id == EventEndpoint.org_id)
        .where(EventEndpoint.removed_at.is_(None))
        .order_by(EventEndpoint.id)
    )
    if slug is not None:
        stmt = stmt.where(EventEndpoint.org_id == get_org(conn, slug).id)
    return [Endpoint(i, s, u, tuple(t.split(",")), c) for i, s, u, t, c in conn.execute(stmt).all()]


def remove_endpoint(
    conn: Connection, endpoint_id: int, *, slug: str | None = None, now: datetime
) -> int:
    """Stop sending to an endpoint: its pending deliveries are cancelled (kept for reading).
    Returns how many were cancelled; an unknown id (or another organization's) is NotFound."""
    stmt = update(EventEndpoint).where(
        EventEndpoint.id == endpoint_id, EventEndpoint.removed_at.is_(None)
    )
    if slug is not None:
        stmt = stmt.where(EventEndpoint.org_id == get_org(conn, slug).id)
    result = conn.execute(stmt.values(removed_at=now))
    if not result.rowcount:
        where = f" of {slug}" if slug else ""
        raise NotFoundError(f"no endpoint {endpoint_id}{where}; see reminders endpoint list")
    return outbox.cancel_for_endpoint(conn, endpoint_id)


STATUSES = tuple(s.value for s in DeliveryStatus)


def list_deliveries(
    conn: Connection,
    *,
    slug: str | None = None,
    status: str | None = None,
    type_: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> list[tuple[int, outbox.DeliveryView]]:
    """Event deliveries, newest first (filters checked, each named when wrong)."""
    if status is not None and status not in STATUSES:
        raise ValidationError(f"status: expected one of {', '.join(STATUSES)}, got {status!r}")
    if type_ is not None and type_ not in events.EVENT_TYPES:
        raise ValidationError(
            f"type: expected one of {', '.join(events.EVENT_TYPES)}, got {type_!r}"
        )
    org_id = get_org(conn, slug).id if slug is not None else None
    return outbox.deliveries(
        conn, org_id=org_id, status=status, type_=type_, limit=limit, before_id=before_id
    )


def replay(
    conn: Connection,
    *,
    now: datetime,
    slug: str | None = None,
    event_ids: Sequence[str] = (),
    statuses: Sequence[str] = (outbox.DEAD,),
) -> int:
    """Deliveries made due again now: the named events' (any status), or every one in
    ``statuses`` (dead by default). Returns how many."""
    bad = [s for s in statuses if s not in STATUSES]
    if bad:
        raise ValidationError(f"status: expected one of {', '.join(STATUSES)}, got {bad[0]!r}")
    org_id = get_org(conn, slug).id if slug is not None else None
    if event_ids:
        # Another organization's event is as unknown as a missing one.
        stmt = select(Event.event_id).where(Event.event_id.in_(list(event_ids)))
        if org_id is not None:
            stmt = stmt.where(Event.org_id == org_id)
        known = set(conn.execute(stmt).scalars())
        missing = [e for e in event_ids if e not in known]
        if missing:
            raise NotFoundError(f"no event {missing[0]}; see reminders events list")
    return outbox.replay(conn, now=now, org_id=org_id, event_ids=event_ids, statuses=statuses)


def delivery_counts(conn: Connection, slug: str | None = None) -> dict[str, int]:
    """Event deliveries per status (of one organization)."""
    return outbox.counts(conn, org_id=get_org(conn, slug).id if slug is not None else None)

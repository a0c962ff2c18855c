"""Outbound events: an organization's endpoints (the secret shown once, when made) and its
events' deliveries, with replay. The same service calls as ``reminders endpoint|events``."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from app.api import pages
from app.api.deps import EngineDep, OrgInPath, SettingsDep
from app.api.problems import Problem, responses
from app.domain.events import DeliveryStatus, EventType
from app.domain.planning import utcnow
from app.services import events as event_service

router = APIRouter(prefix="/organizations/{slug}", tags=["events"], dependencies=[OrgInPath])

EventId = Annotated[str, Field(max_length=40)]


class EndpointIn(BaseModel):
    url: str = Field(max_length=2000, description="http(s) URL the events are POSTed to")
    events: list[EventType] | None = Field(
        None, min_length=1, description="Event types it wants (default: all)"
    )


class EndpointOut(BaseModel):
    id: int
    url: str
    events: list[EventType]
    created_at: datetime


class EndpointCreated(EndpointOut):
    secret: str = Field(
        description="Standard Webhooks secret (whsec_…) the host verifies each "
        "webhook-signature with; shown only in this answer"
    )


class DeliveryOut(BaseModel):
    delivery_id: int
    event_id: str = Field(description="The event's id: webhook-id, for the host's dedupe")
    type: EventType
    organization: str
    endpoint_id: int
    url: str
    status: DeliveryStatus
    attempts: int
    last_status: int | None = Field(description="The endpoint's last HTTP status")
    last_error: str | None
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    payload: dict[str, Any] = Field(description="The event exactly as it is POSTed")


class ReplayIn(BaseModel):
    event_ids: list[EventId] | None = Field(
        None, min_length=1, max_length=1000, description="These events' deliveries, any status"
    )
    status: DeliveryStatus | None = Field(
        None, description="Every delivery in this status (default, without event_ids: dead)"
    )


class Replayed(BaseModel):
    replayed: int = Field(description="Deliveries due again now")


def _endpoint(e: event_service.Endpoint) -> dict[str, Any]:
    return {"id": e.id, "url": e.url, "events": list(e.events), "created_at": e.created_at}


@router.post(
    "/endpoints",
    status_code=201,
    response_model=EndpointCreated,
    summary="Send this organization's events to a URL; the answer holds the signing secret, once",
    responses=responses(401, 404, 422),
)
def add_endpoint(
    slug: str, body: EndpointIn, engine: EngineDep, s: SettingsDep, response: Response
) -> Any:
    types = [t.value for t in body.events] if body.events is not None else None
    with engine.begin() as conn:
        made = event_service.add_endpoint(
            conn, slug, body.url, types=types, settings=s, now=utcnow()
        )
    response.headers["Cache-Control"] = "no-store"
    return {**_endpoint(made), "secret": made.secret}


@router.get(
    "/endpoints",
    response_model=pages.Page[EndpointOut],
    summary="This organization's endpoints (never their secrets)",
    responses=responses(401, 404, 422),
)
def list_endpoints(
    slug: str, engine: EngineDep, cursor: pages.Cursor = None, limit: pages.Limit = 100
) -> Any:
    after = pages.decode_as(cursor, int)
    with engine.connect() as conn:
        found = [
            _endpoint(e)
            for e in event_service.list_endpoints(conn, slug)
            if after is None or e.id > after
        ]
    return pages.page(found[: limit + 1], limit, lambda e: e["id"])


@router.delete(
    "/endpoints/{endpoint_id}",
    status_code=204,
    response_class=Response,
    summary="Stop sending to an endpoint; its pending deliveries are cancelled",
    responses=responses(401, 404, 422),
)
def remove_endpoint(slug: str, endpoint_id: int, engine: EngineDep) -> Response:
    with engine.begin() as conn:
        event_service.remove_endpoint(conn, endpoint_id, slug=slug, now=utcnow())
    return Response(status_code=204)


@router.get(
    "/events",
    response_model=pages.Page[DeliveryOut],
    summary="Each event's delivery to each endpoint, newest first",
    responses=responses(401, 404, 422),
)
def list_events(
    slug: str,
    engine: EngineDep,
    status: DeliveryStatus | None = None,
    type_: Annotated[EventType | None, Query(alias="type")] = None,
    cursor: pages.Cursor = None,
    limit: pages.Limit = 100,
) -> Any:
    before = pages.decode_as(cursor, int)
    with engine.connect() as conn:
        found = event_service.list_deliveries(
            conn,
            slug=slug,
            status=status.value if status else None,
            type_=type_.value if type_ else None,
            limit=limit + 1,
            before_id=before,
        )
    items = [{**asdict(v), "delivery_id": i, "payload": json.loads(v.payload)} for i, v in found]
    return pages.page(items, limit, lambda d: d["delivery_id"])


@router.post(
    "/events/replay",
    response_model=Replayed,
    summary="Make deliveries due again now: these events', or every dead one",
    responses=responses(401, 404, 422),
)
def replay_events(slug: str, engine: EngineDep, body: ReplayIn | None = None) -> Any:
    event_ids = body.event_ids if body and body.event_ids else []
    status = body.status if body else None
    if event_ids and status is not None:
        raise Problem(422, "event_ids, status: give one or the other")
    statuses = ((status or DeliveryStatus.DEAD).value,)
    with engine.begin() as conn:
        n = event_service.replay(
            conn, now=utcnow(), slug=slug, event_ids=event_ids, statuses=statuses
        )
    return {"replayed": n}

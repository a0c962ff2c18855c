"""Outbound events: where they go (``reminders endpoint …``) and how they went
(``reminders events …``)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from app.cli.common import echo_json, engine, now, settings
from app.db import outbox
from app.domain.events import EVENT_TYPES, iso
from app.errors import ValidationError
from app.logs import configure_logging
from app.services import events as event_service
from app.services.event_delivery import deliver_due


@click.group("endpoint")
def endpoint_group() -> None:
    """Where an organization's events are POSTed, signed (Standard Webhooks)."""


def endpoint_dict(e: event_service.Endpoint) -> dict[str, Any]:
    """An endpoint as the CLI and the API show it (the secret only when it was just made)."""
    shown: dict[str, Any] = {
        "id": e.id,
        "organization": e.organization,
        "url": e.url,
        "events": list(e.events),
        "created_at": iso(e.created_at),
    }
    if e.secret is not None:
        shown["secret"] = e.secret
    return shown


@endpoint_group.command("add")
@click.argument("slug")
@click.argument("url")
@click.option(
    "--events",
    "types",
    metavar="TYPE,TYPE",
    help=f"Only these event types (default: all): {', '.join(EVENT_TYPES)}.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with the secret).")
def endpoint_add(slug: str, url: str, types: str | None, as_json: bool) -> None:
    """Send SLUG's events to URL; prints the signing secret, once."""
    with engine().begin() as conn:
        made = event_service.add_endpoint(
            conn, slug, url, types=types, settings=settings(), now=now()
        )
    if as_json:
        echo_json(endpoint_dict(made))
    else:
        click.echo(f"added endpoint {made.id} for {slug}: {made.url}")
        click.echo(f"events: {', '.join(made.events)}")
        click.echo(f"secret: {made.secret}")
    click.echo(
        "the secret is shown only now: the host verifies each event's webhook-signature "
        "with it (Standard Webhooks)",
        err=True,
    )


@endpoint_group.command("list")
@click.argument("slug", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def endpoint_list(slug: str | None, as_json: bool) -> None:
    """Live endpoints (of one organization): id, URL, event types; never the secret."""
    with engine().connect() as conn:
        found = [endpoint_dict(e) for e in event_service.list_endpoints(conn, slug)]
    if as_json:
        echo_json(found)
        return
    for e in found:
        types = "all" if tuple(e["events"]) == EVENT_TYPES else ",".join(e["events"])
        click.echo(f"{e['id']:>4} {e['organization']:<16} {e['url']} events {types}")


@endpoint_group.command("remove")
@click.argument("endpoint_id", metavar="ID", type=int)
@click.option("--org", "slug", help="Only if it is this organization's.")
def endpoint_remove(endpoint_id: int, slug: str | None) -> None:
    """Stop sending to an endpoint; its pending deliveries are cancelled (kept for reading)."""
    with engine().begin() as conn:
        cancelled = event_service.remove_endpoint(conn, endpoint_id, slug=slug, now=now())
    click.echo(f"removed endpoint {endpoint_id}; {_deliveries(cancelled, 'pending ')} cancelled")


@click.group("events")
def events_group() -> None:
    """The outbox: each event's delivery to each endpoint, replays, delivering now."""


def delivery_dict(delivery_id: int, v: outbox.DeliveryView) -> dict[str, Any]:
    """A delivery as the CLI and the API show it, with the event exactly as it is sent."""
    return {
        "delivery_id": delivery_id,
        "event_id": v.event_id,
        "type": v.type,
        "organization": v.organization,
        "endpoint_id": v.endpoint_id,
        "url": v.url,
        "status": v.status,
        "attempts": v.attempts,
        "last_status": v.last_status,
        "last_error": v.last_error,
        "created_at": iso(v.created_at),
        "next_attempt_at": iso(v.next_attempt_at) if v.next_attempt_at else None,
        "delivered_at": iso(v.delivered_at) if v.delivered_at else None,
        "payload": json.loads(v.payload),
    }


@events_group.command("list")
@click.option("--org", "slug", help="Only this organization's.")
@click.option("--status", type=click.Choice(event_service.STATUSES), help="Only in this status.")
@click.option("--type", "type_", type=click.Choice(EVENT_TYPES), help="Only of this type.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with each event's payload).")
def events_list(
    slug: str | None, status: str | None, type_: str | None, limit: int, as_json: bool
) -> None:
    """Deliveries, newest first: event, endpoint, status, attempts, last answer, times."""
    with engine().connect() as conn:
        found = event_service.list_deliveries(
            conn, slug=slug, status=status, type_=type_, limit=limit
        )
    rows = [delivery_dict(i, v) for i, v in found]
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        answer = r["last_error"] or (f"HTTP {r['last_status']}" if r["last_status"] else "-")
        when = (
            f"delivered {r['delivered_at']}"
            if r["delivered_at"]
            else f"next {r['next_attempt_at']}"
            if r["next_attempt_at"]
            else ""
        )
        click.echo(
            f"{r['event_id']} {r['type']:<19} {r['organization']:<12} endpoint "
            f"{r['endpoint_id']} {r['status']:<9} attempts {r['attempts']} last {answer}; "
            f"created {r['created_at']} {when}".rstrip()
        )


@events_group.command("replay")
@click.argument("event_ids", metavar="[EVENT_ID]...", nargs=-1)
@click.option("--org", "slug", help="Only this organization's.")
@click.option("--dead", is_flag=True, help="Every dead delivery (the default without ids).")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(event_service.STATUSES),
    help="Every delivery in this status (repeatable).",
)
def events_replay(
    event_ids: tuple[str, ...], slug: str | None, dead: bool, statuses: tuple[str, ...]
) -> None:
    """Make deliveries due again now, with a fresh retry period: the named events', or every
    dead one (of the organization)."""
    if event_ids and (dead or statuses):
        raise ValidationError("give event ids or --dead/--status, not both")
    wanted = tuple(dict.fromkeys((*statuses, *((outbox.DEAD,) if dead else ())))) or (outbox.DEAD,)
    with engine().begin() as conn:
        n = event_service.replay(conn, now=now(), slug=slug, event_ids=event_ids, statuses=wanted)
    click.echo(
        f"{_deliveries(n)} due again now (the worker sends them at its next tick, or run "
        "`reminders events deliver`)"
    )


@events_group.command("deliver")
@click.option(
    "--budget",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Seconds to keep delivering what comes due.",
)
def events_deliver(budget: float) -> None:
    """Deliver what is due now, in this process (what the worker's task does)."""
    s = settings()
    configure_logging(s, stream=sys.stderr)
    report = deliver_due(engine(), s, budget_seconds=budget)
    with engine().connect() as conn:
        due = outbox.next_due(conn)
    later = f"; next attempt due {iso(due)}" if due is not None else ""
    click.echo(
        f"delivered {report.delivered}, retrying {report.retrying}, dead {report.dead}{later}"
    )


def _deliveries(n: int, kind: str = "") -> str:
    return f"{n} {kind}delivery" if n == 1 else f"{n} {kind}deliveries"


COMMANDS = [endpoint_group, events_group]

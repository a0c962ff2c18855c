"""Outbound events: what the service tells its host, and the rules of telling it.

Plain Python: the event types, the Standard Webhooks signature (https://www.standardwebhooks.com:
``webhook-id``, ``webhook-timestamp``, ``webhook-signature`` = ``v1,`` + base64 of HMAC-SHA256
over ``id.timestamp.body`` with the secret's bytes), when a failed delivery is tried again, and
which addresses an endpoint may point at. The database and HTTP sides live in app.db.outbox and
app.services.events.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit


class EventType(StrEnum):
    MESSAGE_SENT = "message.sent"
    MESSAGE_DELIVERED = "message.delivered"
    MESSAGE_UNDELIVERED = "message.undelivered"
    MESSAGE_FAILED = "message.failed"
    MESSAGE_SKIPPED = "message.skipped"
    OPTOUT_CREATED = "optout.created"
    OPTOUT_REMOVED = "optout.removed"
    DAY_COMPLETED = "day.completed"


EVENT_TYPES = tuple(t.value for t in EventType)


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # waiting for its (next) attempt
    DELIVERED = "delivered"  # the endpoint answered 2xx
    DEAD = "dead"  # kept failing for the whole retry period; `reminders events replay` revives it
    CANCELLED = "cancelled"  # its endpoint was removed before it went


#: What a delivery receipt's status means as an event (others, like ``sent``, say nothing new).
RECEIPT_EVENTS = {
    "delivered": EventType.MESSAGE_DELIVERED,
    "undelivered": EventType.MESSAGE_UNDELIVERED,
    "failed": EventType.MESSAGE_FAILED,
}


def parse_types(raw: Iterable[str] | str | None) -> tuple[str, ...]:
    """The event types an endpoint wants: names from EVENT_TYPES (comma-separated or a list);
    none, or ``*``, means all. An unknown name is refused, naming it and the known ones."""
    if raw is None:
        return EVENT_TYPES
    parts = raw.split(",") if isinstance(raw, str) else list(raw)
    names = [p.strip() for p in parts if p.strip()]
    if not names or names == ["*"]:
        return EVENT_TYPES
    unknown = [n for n in names if n not in EVENT_TYPES]
    if unknown:
        raise ValueError(
            f"unknown event type {unknown[0]!r}; known types: {', '.join(EVENT_TYPES)}"
        )
    return tuple(t for t in EVENT_TYPES if t in names)


# --- signing ----------------------------------------------------------------------------------

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret


def new_secret() -> str:
    """A fresh endpoint secret in the Standard Webhooks format: ``whsec_`` + base64 of 32
    random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header's value for this message."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, *, msg_id: str, body: bytes, now: datetime) -> dict[str, str]:
    """The signed request's headers."""
    timestamp = int(now.timestamp())
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id=msg_id, timestamp=timestamp, body=body),
    }


def body(*, event_id: str, type_: str, at: datetime, data: Mapping[str, Any]) -> str:
    """An event as it is sent (Standard Webhooks' payload shape: type, timestamp, data)."""
    return json.dumps(
        {"id": event_id, "type": type_, "timestamp": iso(at), "data": dict(data)},
        separators=(",", ":"),
        default=_json_default,
    )


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    return str(value)  # dates, decimals


# --- retrying -----------------------------------------------------------------------------------


def retry_delay(attempt: int, *, base: float, cap: float, jitter: float) -> float:
    """Seconds before attempt ``attempt + 1`` after ``attempt`` failed: exponential from
    ``base`` (doubling per attempt), at most ``cap``, times a jitter factor in [0.5, 1] (given
    as ``jitter`` in [0, 1], so the rule stays a plain function) so endpoints coming back are
    not hit by every waiting event at once."""
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    exponential = base * 2.0 ** min(attempt - 1, 62)
    return min(cap, exponential) * (0.5 + 0.5 * jitter)


def gives_up(*, first_at: datetime, failed_at: datetime, retry_for: float) -> bool:
    """A delivery that still fails ``retry_for`` seconds after it was first due is dead."""
    return (failed_at - first_at).total_seconds() >= retry_for


# --- where events may go ----------------------------------------------------------------------


def check_url(url: str) -> str:
    """An endpoint URL: http or https with a host, no credentials in it. Returns it as given."""
    value = url.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {url!r}")
    if parts.username or parts.password:
        raise ValueError("an endpoint URL must not carry a user or password; the events are signed")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    # A name no resolver can take (an empty or over-long label, a control character) is
    # refused here, in one line, rather than deep in getaddrinfo or at every delivery.
    try:
        if not parts.hostname.isprintable() or " " in parts.hostname:
            raise UnicodeError
        parts.hostname.encode("idna")
    except UnicodeError:
        raise ValueError(f"bad host name in {url!r}") from None
    return value


def private_address(address: str) -> bool:
    """Loopback, private, link-local, multicast, reserved or unspecified: not the public
    internet, so not a place a host's events may be sent to (unless EVENTS_ALLOW_PRIVATE)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast

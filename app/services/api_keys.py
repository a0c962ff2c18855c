"""API keys: made once and shown once; only their SHA-256 is stored.

A key is 32 random bytes, so a plain (unsalted) SHA-256 is enough: nobody can guess one to
look up, and the lookup by hash never compares the secret itself. The final comparison is
``hmac.compare_digest`` all the same, so no byte-by-byte timing leaks.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, insert, select, update

from app.db.models import ApiKey, Organization
from app.errors import NotFoundError, ValidationError
from app.services.orgs import get_org

PREFIX = "rk_"


@dataclass(frozen=True)
class Caller:
    """Who a request is from: an organization's key (``org_id``) or an admin key."""

    key_id: int
    org_id: int | None
    org_slug: str | None

    @property
    def admin(self) -> bool:
        return self.org_id is None


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(
    conn: Connection, *, slug: str | None, admin: bool, name: str, now: datetime
) -> tuple[int, str]:
    """A new key for an organization (or an admin key); returns its id and the key itself."""
    if admin == (slug is not None):
        raise ValidationError("give an organization SLUG or --admin (one of them)")
    org_id = get_org(conn, slug).id if slug is not None else None
    key = PREFIX + secrets.token_urlsafe(32)
    inserted = conn.execute(
        insert(ApiKey).values(
            org_id=org_id,
            name=name.strip()[:200],
            prefix=key[:10],
            key_hash=_hash(key),
            created_at=now,
        )
    ).inserted_primary_key
    assert inserted is not None
    return int(inserted[0]), key


def list_keys(conn: Connection) -> list[dict[str, object]]:
    """Every key's id, scope, name and prefix (never the key: it is not stored)."""
    rows = conn.execute(
        select(
            ApiKey.id,
            Organization.slug,
            ApiKey.org_id.is_(None),
            ApiKey.name,
            ApiKey.prefix,
            ApiKey.created_at,
            ApiKey.revoked_at,
        )
        .outerjoin(Organization, Organization.id == ApiKey.org_id)
        .order_by(ApiKey.id)
    ).all()
    return [
        {
            "id": key_id,
            "organization": slug,
            "admin": bool(admin),
            "name": name,
            "prefix": prefix,
            "created_at": created.isoformat(),
            "revoked_at": revoked.isoformat() if revoked else None,
        }
        for key_id, slug, admin, name, prefix, created, revoked in rows
    ]


def revoke_key(conn: Connection, key_id: int, *, now: datetime) -> bool:
    """Revoke a key; False when it was already revoked."""
    if conn.execute(select(ApiKey.id).where(ApiKey.id == key_id)).first() is None:
        raise NotFoundError(f"no API key {key_id}; see `reminders api-key list`")
    result = conn.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return (result.rowcount or 0) > 0


def authenticate(conn: Connection, presented: str) -> Caller | None:
    """The caller a key belongs to, or None for a wrong or revoked key."""
    digest = _hash(presented)
    row = conn.execute(
        select(ApiKey.id, ApiKey.org_id, ApiKey.key_hash, ApiKey.revoked_at, Organization.slug)
        .outerjoin(Organization, Organization.id == ApiKey.org_id)
        .where(ApiKey.key_hash == digest)
    ).first()
    if row is None or not hmac.compare_digest(row.key_hash, digest) or row.revoked_at:
        return None
    return Caller(key_id=row.id, org_id=row.org_id, org_slug=row.slug)

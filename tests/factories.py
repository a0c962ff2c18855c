"""Small builders for test data, and a recording provider (a real class, not a patch)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Engine, insert, select, text

from app.db.models import DEFAULT_TEMPLATE_LEAD, Customer, Reminder, Subscription, Template
from app.domain.phones import InvalidPhone, normalize_phone
from app.providers.base import BlockingProvider, SentMessage
from app.services.orgs import OrgInput, add_org
from app.services.ratelimit import NoRateLimit
from app.services.sender import Sender
from app.settings import Settings

TABLES = (
    "event_deliveries, events, event_endpoints, "
    "early_receipts, undeliverable_numbers, api_runs, api_keys, test_messages, reminders, "
    "daily_runs, opt_outs, templates, "
    "subscriptions, customers, organizations"
)


def clean_tables(engine: Engine) -> None:
    """Every table emptied (ids restart on PostgreSQL): a test starts from nothing."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
        else:
            for table in TABLES.split(", "):
                conn.execute(text(f"DELETE FROM {table}"))


def make_org(
    engine: Engine, slug: str = "acme", *, tz: str = "UTC", now: datetime, **kw: Any
) -> int:
    settings = Settings()
    kw.setdefault("country", "US")  # national numbers in these tests are US ones
    with engine.begin() as conn:
        org = add_org(
            conn,
            OrgInput(slug=slug, name=kw.pop("name", slug.title()), timezone=tz, **kw),
            settings=settings,
            now=now,
        )
    return org.id


def store_template(engine: Engine, org_id: int, body: str, *, lead: int | None = None) -> None:
    """A template stored without ``template set``'s checks (an older release, a hand edit)."""
    with engine.begin() as conn:
        conn.execute(
            insert(Template).values(
                org_id=org_id,
                lead_days=DEFAULT_TEMPLATE_LEAD if lead is None else lead,
                body=body,
                updated_at=datetime.now(UTC),
            )
        )


def add_subscription(
    engine: Engine,
    org_id: int,
    *,
    expires_on: date,
    phone: str = "+12025550100",
    name: str = "Pat",
    status: str = "active",
    ext: str | None = None,
) -> int:
    ext = ext or uuid.uuid4().hex[:10]
    try:
        e164, err = normalize_phone(phone, "US"), None
    except InvalidPhone as exc:
        e164, err = None, str(exc)
    with engine.begin() as conn:
        cid = conn.execute(
            insert(Customer).values(
                org_id=org_id,
                external_id=f"c-{ext}",
                name=name,
                phone=phone,
                phone_e164=e164,
                phone_error=err,
            )
        ).inserted_primary_key[0]
        sid = conn.execute(
            insert(Subscription).values(
                org_id=org_id,
                customer_id=cid,
                external_id=f"s-{ext}",
                plan="Fiber",
                expires_on=expires_on,
                amount=None,
                currency=None,
                status=status,
            )
        ).inserted_primary_key[0]
    return int(sid)


def ledger_rows(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(Reminder).order_by(Reminder.id))]


@dataclass
class RecordingProvider(BlockingProvider):
    """Records every send; ``script`` maps a phone to a list of outcomes to play in turn."""

    name: str = "recording"
    can_reconcile: bool = False
    sent: list[tuple[str, str, str | None]] = field(default_factory=list)
    script: dict[str, list[Callable[[], None]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, to: str, body: str, sender: str | None, *, valid_for: int | None = None) -> str:
        with self.lock:
            steps = self.script.get(to)
            step = steps.pop(0) if steps else None
        if step is not None:
            step()  # raises the scripted error
        with self.lock:
            self.sent.append((to, body, sender))
            return f"SM{len(self.sent):032d}"

    def find_sent(
        self, *, to: str, body: str, sender: str | None, since: datetime
    ) -> SentMessage | None:
        return None


def make_sender(engine: Engine, provider: RecordingProvider, **overrides: object) -> Sender:
    settings = Settings(**overrides)  # type: ignore[arg-type]
    return Sender(engine=engine, provider=provider, settings=settings, limiter=NoRateLimit())

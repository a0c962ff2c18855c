"""Tables. The ledger (``reminders``) is the heart: one row per (subscription, expiry, lead day).

Constraints, not application checks, keep the promises: the unique key on the ledger makes a
second plan of the same reminder impossible, and the unique key on ``daily_runs`` makes a second
start of an organization's day impossible.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    Time,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from app.domain.status import Status

# SQLite only auto-increments INTEGER PRIMARY KEY; BIGINT elsewhere.
BigId = BigInteger().with_variant(Integer(), "sqlite")

STATUSES = tuple(s.value for s in Status)
DEFAULT_TEMPLATE_LEAD = -1  # templates.lead_days for the organization-wide default


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC in Python on every backend (SQLite would otherwise hand back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def aware_utc(value: datetime | str | None) -> datetime | None:
    """An aggregate (MIN, MAX) of a UTCDateTime column comes back without the column's type
    (SQLite: naive UTC text): as the column would give it."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class StatusType(TypeDecorator[str]):
    """A ledger status: ``Status`` members are stored by value (a driver would otherwise be
    free to write an enum's name)."""

    impl = String(10)
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else Status(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return value


class Base(DeclarativeBase):
    pass


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64))
    send_time: Mapped[time] = mapped_column(Time)
    window_start: Mapped[time] = mapped_column(Time)
    window_end: Mapped[time] = mapped_column(Time)
    lead_days: Mapped[str] = mapped_column(String(100))  # "5,3,1"
    country: Mapped[str] = mapped_column(String(2))
    sender: Mapped[str | None] = mapped_column(String(64))
    rate_per_second: Mapped[float | None] = mapped_column(Float)
    # False after `reminders org disable`: plans and sends nothing (engine.load_orgs,
    # ledger.active_org_ids select only active organizations); disabled_at says since when.
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    @property
    def leads(self) -> tuple[int, ...]:
        return tuple(sorted((int(x) for x in self.lead_days.split(",")), reverse=True))


class Template(Base):
    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("org_id", "lead_days", name="uq_templates_org_lead"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    lead_days: Mapped[int] = mapped_column(Integer)  # DEFAULT_TEMPLATE_LEAD for the org default
    body: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Customer(Base):
    __tablename__ = "customers"
    __table_args__ = (UniqueConstraint("org_id", "external_id", name="uq_customers_org_ext"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str] = mapped_column(String(64))  # as given
    phone_e164: Mapped[str | None] = mapped_column(String(20))  # None when invalid
    phone_error: Mapped[str | None] = mapped_column(String(200))


class Subscription(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        UniqueConstraint("org_id", "external_id", name="uq_subscriptions_org_ext"),
        Index("ix_subscriptions_org_expires", "org_id", "expires_on"),
        # The target of the ledger's (subscription_id, org_id) key; an index, so SQLite adds it
        # without rebuilding this table (migration 0009).
        Index("uq_subscriptions_id_org", "id", "org_id", unique=True),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(String(100))
    plan: Mapped[str] = mapped_column(String(200))
    expires_on: Mapped[date] = mapped_column(Date)
    amount: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    currency: Mapped[str | None] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20), default="active")  # active | cancelled


class OptOut(Base):
    __tablename__ = "opt_outs"
    __table_args__ = (UniqueConstraint("org_id", "phone_e164", name="uq_opt_outs_org_phone"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    phone_e164: Mapped[str] = mapped_column(String(20))
    source: Mapped[str] = mapped_column(String(20))  # cli | inbound | provider
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Reminder(Base):
    """The ledger. Sending claims a row with one conditional UPDATE from ``pending``.

    A row belongs to its subscription and to that subscription's organization: one composite
    key (subscription_id, org_id) says both, and deleting either deletes the row (an
    organization's subscriptions go with it). The customer has its own key: a subscription may
    move to another customer, and a row already tried keeps the customer it went to.
    """

    __tablename__ = "reminders"
    __table_args__ = (
        ForeignKeyConstraint(
            ["subscription_id", "org_id"],
            ["subscriptions.id", "subscriptions.org_id"],
            ondelete="CASCADE",
            name="fk_reminders_subscription_org",
        ),
        UniqueConstraint(
            "subscription_id", "expires_on", "lead_days", name="uq_reminders_sub_expiry_lead"
        ),
        CheckConstraint(
            "status IN ('pending','sending','sent','failed','skipped','unknown')",
            name="ck_reminders_status",
        ),
        Index("ix_reminders_due", "status", "next_attempt_at"),
        Index("ix_reminders_org_date", "org_id", "local_date"),
        Index("ix_reminders_provider_id", "provider_message_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_id: Mapped[int] = mapped_column(BigId)
    subscription_id: Mapped[int] = mapped_column(BigId)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    expires_on: Mapped[date] = mapped_column(Date)
    lead_days: Mapped[int] = mapped_column(Integer)
    local_date: Mapped[date] = mapped_column(Date)  # the organization's day it was planned for
    days_left: Mapped[int] = mapped_column(Integer)  # as rendered into the body
    phone: Mapped[str | None] = mapped_column(String(64))
    sender: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(StatusType(), default=Status.PENDING.value)
    reason: Mapped[str | None] = mapped_column(String(200))
    body: Mapped[str | None] = mapped_column(Text)
    # The stored template's problem when this text's body is the built-in default instead (R7).
    template_fallback: Mapped[str | None] = mapped_column(Text)
    segments: Mapped[int | None] = mapped_column(Integer)
    encoding: Mapped[str | None] = mapped_column(String(8))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    provider_message_id: Mapped[str | None] = mapped_column(String(64))
    delivery_status: Mapped[str | None] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class DailyRun(Base):
    """One per (organization, local date): the automatic daily run starts each day once."""

    __tablename__ = "daily_runs"
    __table_args__ = (UniqueConstraint("org_id", "local_date", name="uq_daily_runs_org_date"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    local_date: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(20))  # started | planned | finished
    task_id: Mapped[str | None] = mapped_column(String(64))
    planned: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ProviderCircuit(Base):
    """A provider account's circuit breaker as its workers last reported it (status, logs).

    ``opened_at`` is set while the circuit is open: the provider failed for many numbers in a
    row, and texts wait instead of using up their retries. Written only when it opens or closes.
    """

    __tablename__ = "provider_circuits"

    account: Mapped[str] = mapped_column(String(100), primary_key=True)
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    failures: Mapped[int] = mapped_column(Integer, default=0)
    numbers: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SendTestMessage(Base):
    """A text sent by `reminders send-test`: kept apart from the ledger, so it is never counted
    as a reminder, never takes a (subscription, expiry, lead day) slot and never blocks one."""

    __tablename__ = "test_messages"
    __table_args__ = (Index("ix_test_messages_org_created", "org_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    phone: Mapped[str] = mapped_column(String(20))
    sender: Mapped[str | None] = mapped_column(String(64))
    lead_days: Mapped[int] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)
    segments: Mapped[int] = mapped_column(Integer)
    encoding: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(10))  # sent | failed | unknown
    provider_message_id: Mapped[str | None] = mapped_column(String(64))
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiKey(Base):
    """A key for the HTTP API: an organization's (``org_id``) or an admin's (``org_id`` None).

    Only the SHA-256 of the key is kept; the key itself is shown once, when it is made.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(16))  # shown in lists to tell keys apart
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ApiRun(Base):
    """A daily run started through the API, so a key sees only the tasks it may see."""

    __tablename__ = "api_runs"

    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    local_date: Mapped[date | None] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class EarlyReceipt(Base):
    """A status callback whose message id no ledger row has yet: Twilio may call back before
    the answer to the send is recorded. Applied (and deleted) when the id lands on its row;
    what is never matched is purged after ``early_receipts.KEEP``."""

    __tablename__ = "early_receipts"
    __table_args__ = (
        UniqueConstraint("sid", "status", name="uq_early_receipts_sid_status"),
        Index("ix_early_receipts_received", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)  # the order they arrived in
    sid: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20))
    error_code: Mapped[str | None] = mapped_column(String(32))
    phone_e164: Mapped[str | None] = mapped_column(String(20))  # the callback's To
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())


class UndeliverableNumber(Base):
    """A number the provider said cannot take texts (Twilio 30005, 30006 on a callback; 21614 at
    send): its organization's later texts to it are skipped ``undeliverable``. Keyed by the
    number, so a customer whose number is changed is texted again."""

    __tablename__ = "undeliverable_numbers"
    __table_args__ = (UniqueConstraint("org_id", "phone_e164", name="uq_undeliverable_org_phone"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    phone_e164: Mapped[str] = mapped_column(String(20))
    error_code: Mapped[str] = mapped_column(String(32))
    since: Mapped[datetime] = mapped_column(UTCDateTime())


class EventEndpoint(Base):
    """Where an organization's host wants its events: a URL, the secret they are signed with
    (made by the service, shown once) and the event types it wants (comma-separated).
    Removing one keeps the row (``removed_at``) so its deliveries stay readable."""

    __tablename__ = "event_endpoints"
    __table_args__ = (Index("ix_event_endpoints_org", "org_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(100))
    event_types: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Event(Base):
    """The outbox: one row per event, written in the transaction of the change that caused
    it, so an event exists exactly when its change committed. ``event_id`` is what a receiver
    deduplicates on (``webhook-id``)."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_org_created", "org_id", "created_at"),
        Index("ix_events_reminder", "reminder_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(40), unique=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(40))
    # The ledger row a message event is about (no foreign key: cleanup may drop the row first).
    reminder_id: Mapped[int | None] = mapped_column(BigInteger)
    payload: Mapped[str] = mapped_column(Text)  # the request body, as signed
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class EventDelivery(Base):
    """One event to one endpoint: claimed for an attempt by one conditional UPDATE that moves
    ``next_attempt_at`` past a lease, so a worker that dies mid-request only delays it."""

    __tablename__ = "event_deliveries"
    __table_args__ = (
        UniqueConstraint("event_pk", "endpoint_id", name="uq_event_deliveries_event_endpoint"),
        CheckConstraint(
            "status IN ('pending','delivered','dead','cancelled')",
            name="ck_event_deliveries_status",
        ),
        Index("ix_event_deliveries_due", "status", "next_attempt_at"),
        Index("ix_event_deliveries_endpoint", "endpoint_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_pk: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("event_endpoints.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(10))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    first_due_at: Mapped[datetime] = mapped_column(UTCDateTime())  # retries stop a period after
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_status: Mapped[int | None] = mapped_column(Integer)  # the endpoint's last HTTP status
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

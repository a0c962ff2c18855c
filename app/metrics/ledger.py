"""The API's ``/metrics``: gauges computed from the ledger when Prometheus scrapes.

A custom collector, not gauges kept up to date: every API process (and a restarted one) gives
the same answer, the ledger's, at the cost of three queries per scrape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from app.db import outbox, snapshot
from app.domain.status import Status

ORG = ["organization"]


def _stamp(moment: datetime | None) -> float:
    """A timestamp gauge's value: Unix seconds, 0 for never."""
    return moment.timestamp() if moment is not None else 0.0


def _age(since: datetime | None, now: datetime) -> float:
    return max(0.0, (now - since).total_seconds()) if since is not None else 0.0


class LedgerCollector(Collector):
    def __init__(self, engine: Engine, clock: Callable[[], datetime]) -> None:
        self.engine = engine
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        started = time.perf_counter()
        with self.engine.connect() as conn:
            snap = snapshot.read(conn, now=self.clock())
        took = time.perf_counter() - started
        yield from families(snap)
        yield GaugeMetricFamily(
            "reminders_ledger_scrape_seconds",
            "How long this scrape's ledger queries took.",
            value=took,
        )


def families(snap: snapshot.Snapshot) -> Iterator[GaugeMetricFamily]:
    rows = GaugeMetricFamily(
        "reminders_ledger_rows",
        "Ledger rows of the organization's local today, by status.",
        labels=[*ORG, "status"],
    )
    send_time = GaugeMetricFamily(
        "reminders_day_send_time_timestamp_seconds",
        "When the organization's day is due to start today (its send time), Unix seconds.",
        labels=ORG,
    )
    started = GaugeMetricFamily(
        "reminders_day_started_timestamp_seconds",
        "When the organization's latest day started, Unix seconds (0: never).",
        labels=ORG,
    )
    completed = GaugeMetricFamily(
        "reminders_day_completed_timestamp_seconds",
        "When the organization's latest day completed, Unix seconds (0: never).",
        labels=ORG,
    )
    due_age = GaugeMetricFamily(
        "reminders_due_oldest_age_seconds",
        "How long the oldest due, unsent (pending) row has been due (0: none).",
        labels=ORG,
    )
    unknown = GaugeMetricFamily(
        "reminders_unknown_rows",
        "Rows whose outcome is unknown (any day), waiting for reconciliation.",
        labels=ORG,
    )
    unknown_age = GaugeMetricFamily(
        "reminders_unknown_oldest_age_seconds",
        "Age of the oldest unknown row's attempt (0: none).",
        labels=ORG,
    )
    events_waiting = GaugeMetricFamily(
        "reminders_events_waiting",
        "Event deliveries to the organization's endpoints not made yet (retrying included).",
        labels=ORG,
    )
    events_age = GaugeMetricFamily(
        "reminders_events_oldest_waiting_age_seconds",
        "How long the oldest event delivery not made yet has been due (0: none).",
        labels=ORG,
    )
    events_dead = GaugeMetricFamily(
        "reminders_events_dead",
        "Event deliveries given up after EVENTS_RETRY_SECONDS (reminders events replay).",
        labels=ORG,
    )
    for org in sorted(snap.orgs, key=lambda o: o.slug):
        told = snap.events.get(org.org_id, outbox.Backlog())
        events_waiting.add_metric([org.slug], told.waiting)
        events_age.add_metric([org.slug], _age(told.waiting_since, snap.at))
        events_dead.add_metric([org.slug], told.dead)
    for org in sorted(snap.orgs, key=lambda o: o.slug):
        slug = [org.slug]
        back = snap.backlog.get(org.org_id, snapshot.Backlog())
        if org.active:
            for status in Status:
                rows.add_metric([org.slug, status.value], snap.today.get((org.org_id, status), 0))
            send_time.add_metric(slug, _stamp(org.send_at))
            started.add_metric(slug, _stamp(org.last_started))
            completed.add_metric(slug, _stamp(org.last_finished))
        elif not back.unknown and back.due_since is None:
            continue  # a disabled organization with nothing waiting says nothing
        due_age.add_metric(slug, _age(back.due_since, snap.at))
        unknown.add_metric(slug, back.unknown)
        unknown_age.add_metric(slug, _age(back.unknown_since, snap.at))
    yield from (rows, send_time, started, completed, due_age, unknown, unknown_age)
    yield from (events_waiting, events_age, events_dead)
    circuit = GaugeMetricFamily(
        "reminders_provider_circuit_open_since_timestamp_seconds",
        "When the provider account's circuit opened (it failed for every number; texts wait, "
        "pending), Unix seconds; 0 while closed.",
        labels=["account"],
    )
    for account, opened in sorted(snap.circuits.items()):
        circuit.add_metric([account], _stamp(opened))
    yield circuit


def registry(engine: Engine, clock: Callable[[], datetime]) -> CollectorRegistry:
    """A registry of the ledger's gauges only (no process or platform collectors)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LedgerCollector(engine, clock))
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    """The text exposition format of everything in ``reg``, collected now."""
    return generate_latest(reg)

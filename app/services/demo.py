"""The demo organization: customers expiring over the coming days, ready at any hour."""

from __future__ import annotations

import csv
import io
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Connection, select

from app.db.models import Organization
from app.domain import planning
from app.services.importer import ImportReport, import_csv
from app.services.orgs import OrgInput, add_org, set_opt_out
from app.settings import Settings

DEMO_SLUG = "demo"
DEMO_TZ = "America/New_York"
# (customer, phone, plan, days until expiry, status)
DEMO_CUSTOMERS = [
    ("c001", "Ada Lovelace", "+1 202 555 0101", "Fiber 500", 5, "active"),
    ("c002", "Grace Hopper", "(202) 555-0102", "Fiber 1000", 3, "active"),
    ("c003", "Alan Turing", "202-555-0103", "Basic 100", 1, "active"),
    ("c004", "Katherine Johnson", "+1 202 555 0104", "Fiber 500", 4, "active"),
    ("c005", "Edsger Dijkstra", "+1 202 555 0105", "Fiber 500", 2, "active"),
    ("c006", "Barbara Liskov", "+1 202 555 0106", "Business 2G", 7, "active"),
    ("c007", "Donald Knuth", "+1 202 555 0107", "Basic 100", 12, "active"),
    ("c008", "Frances Allen", "+1 202 555 0108", "Fiber 1000", 3, "active"),
    ("c009", "Ken Thompson", "not-a-number", "Basic 100", 3, "active"),
    ("c010", "Margaret Hamilton", "+1 202 555 0110", "Fiber 500", 1, "active"),
    ("c011", "John Backus", "+1 202 555 0111", "Fiber 500", 5, "cancelled"),
    ("c012", "Radia Perlman", "+1 202 555 0112", "Business 2G", -2, "active"),
]
OPTED_OUT = "+1 202 555 0110"


def load_demo(conn: Connection, *, settings: Settings, now: datetime) -> tuple[bool, ImportReport]:
    """Create the demo organization if missing and (re)load its customers. Idempotent."""
    created = False
    if not conn.execute(select(Organization.id).where(Organization.slug == DEMO_SLUG)).first():
        add_org(
            conn,
            OrgInput(
                slug=DEMO_SLUG,
                name="Demo Telecom",  # not "Demo Fiber": texts read "your <org> <plan> plan"
                timezone=DEMO_TZ,
                send_time="00:00",
                send_window="00:00-00:00",  # all day: the demo goes out whenever it is started
                country="US",
            ),
            settings=settings,
            now=now,
        )
        created = True
    today = planning.local_date(now, DEMO_TZ)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(
        [
            "customer_id",
            "name",
            "phone",
            "subscription_id",
            "plan",
            "expires_on",
            "amount",
            "currency",
            "status",
        ]
    )
    for cid, name, phone, plan, days, status in DEMO_CUSTOMERS:
        expires = today + timedelta(days=days)
        writer.writerow(
            [cid, name, phone, f"s-{cid}", plan, expires.isoformat(), "49.90", "USD", status]
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "demo.csv"
        path.write_text(buf.getvalue(), encoding="utf-8")
        report = import_csv(conn, DEMO_SLUG, path)
    set_opt_out(conn, DEMO_SLUG, OPTED_OUT, opted_out=True, now=now)
    return created, report

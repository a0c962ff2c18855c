"""The send path renders a text as it leaves: one organization's template past a bound fails
that organization's texts (``template_refused``), and the batch sends the others (issue 15)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import pytest
from sqlalchemy import Engine

from app.domain.templates import TemplateTooSlow
from app.providers.twilio import TwilioProvider
from app.services.engine import TemplateBook, load_orgs, render_body
from app.services.sender import Sender
from tests.factories import store_template
from tests.ledger_rows import get_row, make_org, make_row
from tests.twilio_fake import FakeTwilio

HIDDEN_REPLACE_CHAIN = (
    "{% if customer.name != 'Alex Example' %}{{ customer.name"
    + ".replace('', '0123456789')" * 6
    + " }}{% endif %}Hi {{ customer.name }}"
)


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


def test_a_batch_fails_the_hostile_organizations_texts_and_sends_the_others(
    engine: Engine, fake: FakeTwilio
) -> None:
    hostile, other = make_org(engine), make_org(engine)
    store_template(engine, hostile, HIDDEN_REPLACE_CHAIN)  # behind the save's back
    # No body yet: each is rendered as it leaves, as the daily run plans them.
    bad = [make_row(engine, hostile, phone=f"+1415555{3000 + i}", body=None) for i in range(3)]
    good = [make_row(engine, other, phone=f"+1415555{4000 + i}", body=None) for i in range(3)]
    settings = fake.settings()
    sender = Sender(engine=engine, provider=TwilioProvider(settings), settings=settings)
    try:
        report = sender.send_ids([*bad, *good], ignore_window=True)
    finally:
        sender.close()

    assert (report.sent, report.failed) == (3, 3)
    assert sorted(m.to for m in fake.messages) == [f"+1415555{4000 + i}" for i in range(3)]
    for rid in bad:
        row = get_row(engine, rid)
        assert (row.status, row.reason, row.attempts, row.body) == (
            "failed",
            "template_refused",
            0,
            None,
        )
        assert row.error_message == (
            "template not allowed: replacing text beyond 1600 characters is not allowed"
        )
    assert {get_row(engine, rid).status for rid in good} == {"sent"}


@dataclass(frozen=True)
class _Row:
    lead_days: int = 3
    customer_name: str = "Bob"
    plan: str = "Fiber"
    expires_on: date = date(2030, 1, 15)
    amount: Decimal | None = None
    currency: str | None = None


def test_a_template_out_of_time_once_is_not_rendered_again_in_the_batch(engine: Engine) -> None:
    """One slow template must not cost its budget again for every row of a batch."""
    org_id = make_org(engine)
    slow = "{% for i in range(100) %}{% for j in range(100) %}{{ '' }}{% endfor %}{% endfor %}x"
    store_template(engine, org_id, slow)
    with engine.connect() as conn:
        orgs = load_orgs(conn, [org_id])
        book = TemplateBook(conn, orgs, budget_ms=0.01)
    with pytest.raises(TemplateTooSlow, match=r"longer than 0\.01 ms"):
        render_body(book, orgs[org_id], _Row(), days_left=3)

    book.budget_ms = 10_000.0  # would be plenty: the source is known to be too slow
    with pytest.raises(TemplateTooSlow, match=r"longer than 0\.01 ms"):
        render_body(book, orgs[org_id], _Row(), days_left=3)

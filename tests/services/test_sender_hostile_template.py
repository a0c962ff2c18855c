"""The send path renders a text as it leaves: one organization's template past a bound fails
that organization's texts (``template_refused``), and the batch sends the others (issue 15)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from app.providers.twilio import TwilioProvider
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

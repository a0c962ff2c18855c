"""The outbox's rule, "nothing lost, nothing invented", checked against a reference model.

Hypothesis plays changes committed or rolled back, an endpoint failing and recovering,
deliveries, workers dying between claiming a delivery and recording it, and time passing.
The model is just the list of changes that committed. However it went, once the endpoint
answers and time has passed, the receiver holds exactly one event id per committed change,
none for a rolled-back one, each signed (verified by an independent Standard Webhooks
library), and every repeat of an id is the same event.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import Engine, select

from app.db import ledger, outbox
from app.db.models import EventDelivery
from app.services import events as event_service
from app.services.event_delivery import Deliverer
from app.settings import Settings
from tests import factories
from tests.event_receiver import receiver

SETTINGS = Settings(
    events_allow_private=True,
    events_timeout_seconds=2.0,
    events_backoff_seconds=1.0,
    events_backoff_max_seconds=30.0,
    events_retry_seconds=10**7,  # never dead here: the rule is about what arrives
)


@pytest.mark.timeout(600)
def test_every_committed_change_arrives_once_by_id_and_no_other(engine: Engine) -> None:
    with receiver() as hook:

        class Outbox(RuleBasedStateMachine):
            def __init__(self) -> None:
                super().__init__()
                factories.clean_tables(engine)
                hook.requests.clear()
                hook.fail_until = 0
                self.now = datetime.now(UTC)
                self.org = factories.make_org(engine, "acme", now=self.now)
                with engine.begin() as conn:
                    made = event_service.add_endpoint(
                        conn, "acme", hook.url, types=None, settings=SETTINGS, now=self.now
                    )
                assert made.secret is not None
                self.secret = made.secret
                self.opted: set[str] = set()
                self.committed: list[tuple[str, str]] = []  # the model: (type, phone)
                self.serial = 0
                self.deliverer = Deliverer(engine, SETTINGS, clock=lambda: self.now)

            @rule(commit=st.booleans())
            def opt_out(self, commit: bool) -> None:
                self.serial += 1
                phone = f"+1415555{self.serial:04d}"
                with engine.connect() as conn:
                    ledger.add_opt_out(
                        conn, org_id=self.org, phone_e164=phone, source="cli", now=self.now
                    )
                    if commit:
                        conn.commit()
                        self.opted.add(phone)
                        self.committed.append(("optout.created", phone))
                    else:
                        conn.rollback()

            @rule(commit=st.booleans(), data=st.data())
            def opt_in(self, commit: bool, data: st.DataObject) -> None:
                if not self.opted:
                    return
                phone = data.draw(st.sampled_from(sorted(self.opted)))
                with engine.connect() as conn:
                    lifted = ledger.remove_opt_outs(
                        conn, org_ids=[self.org], phone_e164=phone, source="cli", now=self.now
                    )
                    assert lifted == 1
                    if commit:
                        conn.commit()
                        self.opted.discard(phone)
                        self.committed.append(("optout.removed", phone))
                    else:
                        conn.rollback()

            @rule(failing=st.booleans())
            def endpoint(self, failing: bool) -> None:
                hook.fail_until = 1e18 if failing else 0

            @rule()
            def deliver(self) -> None:
                self.deliverer.run(budget_seconds=5)

            @rule(n=st.integers(min_value=1, max_value=5))
            def worker_dies_mid_delivery(self, n: int) -> None:
                """Claimed (the request may even have gone out) and never recorded."""
                with engine.begin() as conn:
                    outbox.claim_due(
                        conn,
                        now=self.now,
                        lease_until=self.now + timedelta(seconds=self.deliverer.lease_seconds),
                        limit=n,
                    )

            @rule(seconds=st.integers(min_value=1, max_value=120))
            def time_passes(self, seconds: int) -> None:
                self.now += timedelta(seconds=seconds)

            @invariant()
            def nothing_invented(self) -> None:
                told = Counter((e["type"], e["data"]["phone"]) for e in self._told().values())
                model = Counter(self.committed)
                assert not told - model, f"events for changes that did not commit: {told - model}"

            def _told(self) -> dict[str, dict[str, object]]:
                events = hook.events(self.secret)  # signatures verified, deduplicated by id
                by_id: dict[str, list[bytes]] = {}
                for r in hook.accepted():
                    by_id.setdefault(r.headers["webhook-id"], []).append(r.body)
                assert all(len(set(bodies)) == 1 for bodies in by_id.values())
                return events

            def teardown(self) -> None:
                hook.fail_until = 0
                for _ in range(100):
                    with engine.connect() as conn:
                        left = conn.execute(
                            select(EventDelivery.id).where(EventDelivery.status != "delivered")
                        ).first()
                    if left is None:
                        break
                    self.now += timedelta(seconds=60)  # past every lease and backoff
                    self.deliverer.run(budget_seconds=5)
                told = self._told()
                pairs = Counter((e["type"], e["data"]["phone"]) for e in told.values())
                assert pairs == Counter(self.committed)  # each once by id, nothing else

        scale = hypothesis_settings.default.max_examples
        run_state_machine_as_test(
            Outbox,
            settings=hypothesis_settings(
                hypothesis_settings.default, max_examples=max(8, scale // 8)
            ),
        )

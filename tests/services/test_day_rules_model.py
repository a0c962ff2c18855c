"""The day's rules R1–R7, checked by a model-based test that drives the real engine.

A Hypothesis state machine builds organizations (zones on both sides of UTC, DST-changing ones,
lead sets with and without 0, windows that wrap midnight), subscriptions (renewed, cancelled,
opted out, invalid numbers, with and without an amount), and acts as an operator would: runs at
random instants (across midnight and DST changes, days skipped), ``--date`` in the past and the
future, ``--ignore-window``, ``--dry-run``, two runs at once. After every step each text the
provider took is checked against a small reference model kept here:

R1 once per (subscription, expiry, lead) · R2 never backwards · R3 true when it leaves (its days
left and lead are those of the local date at the instant the provider got it; a run for another
date sends and writes nothing) · R4 inside the window · R5 not lost (a due reminder is sent or
still waiting; a skip is justified by the model) · R6 a manual run leaves nothing due behind
· R7 no "None" in a text, an unguarded optional field refused when the template is saved.

``RULES_SURVEY=1`` records every broken rule instead of stopping at the first, and prints them.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from freezegun import freeze_time
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, insert, select, text, update

from app.db.models import Customer, Reminder, Subscription
from app.domain import planning
from app.errors import ValidationError
from app.providers.base import BlockingProvider, PermanentError, TransientError
from app.providers.console import ConsoleProvider
from app.services import orgs as org_service
from app.services import runner
from app.services.ratelimit import LocalRateLimiter
from app.services.sender import Sender
from app.settings import Settings, parse_window
from tests.factories import clean_tables

SURVEY = os.environ.get("RULES_SURVEY") == "1"
BROKEN: dict[str, dict[str, str]] = {}  # rule -> kind of message -> an example (survey mode)
# A state machine's example is a whole story of steps: an eighth of the profile's examples.
EXAMPLES = max(1, settings.default.max_examples // 8)
TIMEOUT = 420 if EXAMPLES <= 20 else 14_400

ZONES = (
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Pacific/Auckland",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
)
LEAD_SETS = ((5, 3, 1), (7, 2, 0), (1,), (0,), (3, 0), (2, 1, 0))
WINDOWS = ("00:00-00:00", "08:00-21:00", "22:00-06:00", "09:00-17:00")
STARTS = (  # a few days before DST changes in the US, Europe and New Zealand
    datetime(2026, 3, 6, 20, 0, tzinfo=UTC),
    datetime(2026, 3, 27, 20, 0, tzinfo=UTC),
    datetime(2026, 4, 3, 9, 0, tzinfo=UTC),
    datetime(2026, 10, 23, 20, 0, tzinfo=UTC),
    datetime(2026, 10, 30, 20, 0, tzinfo=UTC),
)
GUARDED = (
    "{{ subscription.plan }} d={{ days_left }} l={{ lead_days }} "
    "e={{ subscription.expires_on.isoformat() }}"
    "{% if subscription.amount and subscription.currency %} due {{ subscription.amount }} "
    "{{ subscription.currency }}{% endif %}"
)
UNGUARDED = (
    "{{ subscription.plan }} d={{ days_left }} l={{ lead_days }} "
    "e={{ subscription.expires_on.isoformat() }} due {{ subscription.amount }} "
    "{{ subscription.currency }}"
)
MARKER = re.compile(r"^(s\d+) d=(-?\d+) l=(\d+) e=(\d{4}-\d\d-\d\d)")
DEFAULT_FORM = re.compile(
    r"(s\d+) plan (expires today|expires tomorrow|expires in (\d+) days) \((\d{4}-\d\d-\d\d)\)"
)
SKIP_REASONS = ("expired", "opted_out", "cancelled", "renewed", "invalid_phone", "superseded")


@dataclass
class Text:
    """One text the provider took, as the customer reads it."""

    at: datetime
    to: str
    body: str
    message_id: str


class ScriptedProvider(BlockingProvider):
    """The console provider, except where a number is scripted to fail (transiently or for
    good); records what the console took, and when."""

    name = "scripted"
    can_reconcile = False

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.texts: list[Text] = []
        self.script: dict[str, list[str]] = {}
        self.console = ConsoleProvider()

    def send(self, to: str, body: str, sender: str | None, *, valid_for: int | None = None) -> str:
        with self.lock:
            steps = self.script.get(to)
            step = steps.pop(0) if steps else None
            if step == "transient":
                raise TransientError("scripted 503", code="503")
            if step == "permanent":
                raise PermanentError("scripted 21211", code="21211")
            message_id = self.console.send(to, body, sender)
            self.texts.append(Text(planning.utcnow(), to, body, message_id))
            return message_id

    def find_sent(self, **_: Any) -> None:
        return None


@dataclass
class Org:
    slug: str
    id: int
    tz: str
    leads: tuple[int, ...]
    window: str
    slow: bool


@dataclass
class Sub:
    ext: str
    id: int
    org: Org
    phone: str
    valid: bool
    expires_on: date
    amount: Decimal | None
    active: bool = True
    opted_out: bool = False
    failing: bool = False  # scripted to fail for good
    # (expiry) that an opt-out, a cancellation or a permanent failure stopped for good
    stopped: set[date] = field(default_factory=set)


def expected_lead(days_left: int, leads: tuple[int, ...]) -> int | None:
    """The model's lead for a text with ``days_left`` to go (the expiry day goes with the
    smallest lead when 0 is not one)."""
    if days_left < 0:
        return None
    due = planning.due_lead(days_left, leads)
    if due is None and days_left == 0:
        return min(leads)
    return due


class DayRules(RuleBasedStateMachine):
    engine: Engine

    def __init__(self) -> None:
        super().__init__()
        clean_tables(self.engine)
        self.provider = ScriptedProvider()
        self.settings = Settings(
            max_attempts=5,
            retry_backoff_seconds=60.0,
            rate_per_second=1000.0,
        )
        self.sender = self._new_sender()
        self.orgs: dict[str, Org] = {}
        self.org_serial = 0
        self.subs: dict[str, Sub] = {}
        self.by_phone: dict[str, Sub] = {}
        self.now = STARTS[0]
        self.seen = 0
        # (subscription id, expiry) -> [(days left, lead, at)] of every text taken so far
        self.sent: dict[tuple[int, date], list[tuple[int, int, datetime]]] = {}
        self.owed: set[tuple[int, date]] = set()

    def _new_sender(self) -> Sender:
        return Sender(
            engine=self.engine,
            provider=self.provider,
            settings=self.settings,
            limiter=LocalRateLimiter(),
            max_rate_wait=0.2,
        )

    def teardown(self) -> None:
        self.sender.close()

    def broken(self, rule: str, message: str) -> None:
        if SURVEY:
            kind = re.sub(r"[\d+-]+|s\d+|org\d+|\[.*?\]|\(.*?\)", "#", message)
            BROKEN.setdefault(rule, {}).setdefault(kind, message)
            return
        raise AssertionError(f"{rule}: {message}")

    # --- the world ----------------------------------------------------------------------------

    @initialize(start=st.sampled_from(STARTS))
    def start(self, start: datetime) -> None:
        self.now = start

    @precondition(lambda self: len(self.orgs) < 3)
    @rule(
        tz=st.sampled_from(ZONES),
        leads=st.sampled_from(LEAD_SETS),
        window=st.sampled_from(WINDOWS),
        slow=st.booleans(),
        minutes=st.none() | st.integers(0, 24 * 60 - 1),
    )
    def add_org(
        self, tz: str, leads: tuple[int, ...], window: str, slow: bool, minutes: int | None
    ) -> None:
        """``org add``; ``minutes`` None is the window's opening (inside it)."""
        self.org_serial += 1
        slug = f"org{self.org_serial}"
        if minutes is None:
            minutes = 9 * 60 if window == "00:00-00:00" else int(window[:2]) * 60
        send_time = f"{minutes // 60:02d}:{minutes % 60:02d}"
        inside = planning._in_window(
            datetime.strptime(send_time, "%H:%M").time(), *parse_window(window)
        )
        data = org_service.OrgInput(
            slug=slug,
            name=slug.title(),
            timezone=tz,
            send_time=send_time,
            send_window=window,
            lead_days=",".join(map(str, leads)),
            country="US",  # some zones (UTC) name no country
            rate=5.0 if slow else None,
        )
        try:
            with self.engine.begin() as conn:
                org = org_service.add_org(conn, data, settings=self.settings, now=self.now)
                org_service.set_template(
                    conn, slug, GUARDED, lead=None, settings=self.settings, now=self.now
                )
        except ValidationError as exc:
            if inside:
                self.broken("R4", f"a send time inside the window was refused: {exc}")
            return
        if not inside:
            self.broken("R4", f"send time {send_time} outside window {window} was accepted")
            with self.engine.begin() as conn:
                conn.execute(
                    text("UPDATE organizations SET active = false WHERE id = :i"), {"i": org.id}
                )
            return
        self.orgs[slug] = Org(slug, org.id, tz, leads, window, slow)

    @precondition(lambda self: self.orgs and len(self.subs) < 14)
    @rule(
        data=st.data(),
        days=st.integers(-1, 8),
        valid=st.booleans() | st.just(True),
        amount=st.sampled_from([None, Decimal("49.90")]),
    )
    def add_subscription(self, data: st.DataObject, days: int, valid: bool, amount: Any) -> None:
        org = self.orgs[data.draw(st.sampled_from(sorted(self.orgs)))]
        n = len(self.subs) + 1
        ext = f"s{n}"
        phone = f"+1202555{n:04d}" if valid else "call me"
        today = planning.local_date(self.now, org.tz)
        with self.engine.begin() as conn:
            cid = conn.execute(
                insert(Customer).values(
                    org_id=org.id,
                    external_id=f"c{n}",
                    name=f"Customer {n}",
                    phone=phone,
                    phone_e164=phone if valid else None,
                    phone_error=None if valid else "not a phone number",
                )
            ).inserted_primary_key[0]
            sid = conn.execute(
                insert(Subscription).values(
                    org_id=org.id,
                    customer_id=cid,
                    external_id=ext,
                    plan=ext,
                    expires_on=today + timedelta(days=days),
                    amount=amount,
                    currency="USD" if amount is not None else None,
                    status="active",
                )
            ).inserted_primary_key[0]
        sub = Sub(ext, int(sid), org, phone, valid, today + timedelta(days=days), amount)
        self.subs[ext] = sub
        if valid:
            self.by_phone[phone] = sub

    def _update_sub(self, sub: Sub, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(Subscription).where(Subscription.id == sub.id).values(**values))

    def _pick_sub(self, data: st.DataObject) -> Sub:
        return self.subs[data.draw(st.sampled_from(sorted(self.subs)))]

    @precondition(lambda self: self.subs)
    @rule(data=st.data(), days=st.integers(1, 30))
    def renew(self, data: st.DataObject, days: int) -> None:
        sub = self._pick_sub(data)
        sub.expires_on = sub.expires_on + timedelta(days=days)
        self._update_sub(sub, expires_on=sub.expires_on)

    @precondition(lambda self: self.subs)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        sub = self._pick_sub(data)
        sub.active = False
        self._update_sub(sub, status="cancelled")

    @precondition(lambda self: self.subs)
    @rule(data=st.data(), out=st.booleans())
    def opt_out(self, data: st.DataObject, out: bool) -> None:
        sub = self._pick_sub(data)
        if not sub.valid:
            return
        with self.engine.begin() as conn:
            org_service.set_opt_out(conn, sub.org.slug, sub.phone, opted_out=out, now=self.now)
        sub.opted_out = out
        if out:
            sub.stopped.add(sub.expires_on)

    @precondition(lambda self: self.by_phone)
    @rule(data=st.data(), kind=st.sampled_from(["transient", "transient2", "permanent"]))
    def script_failure(self, data: st.DataObject, kind: str) -> None:
        sub = self.by_phone[data.draw(st.sampled_from(sorted(self.by_phone)))]
        steps = {"transient": ["transient"], "transient2": ["transient"] * 2}.get(kind, [])
        if kind == "permanent":
            steps = ["permanent"] * 50
            sub.failing = True
        with self.provider.lock:
            self.provider.script[sub.phone] = steps

    @precondition(lambda self: self.orgs)
    @rule(data=st.data())
    def set_unguarded_template(self, data: st.DataObject) -> None:
        """R7: a template that would print "None" for a customer without an amount is refused."""
        org = self.orgs[data.draw(st.sampled_from(sorted(self.orgs)))]
        try:
            with self.engine.begin() as conn:
                org_service.set_template(
                    conn, org.slug, UNGUARDED, lead=None, settings=self.settings, now=self.now
                )
        except ValidationError:
            return
        self.broken("R7", "a template printing subscription.amount unguarded was accepted")

    @rule(minutes=st.integers(1, 59) | st.integers(60, 3 * 24 * 60) | st.just(24 * 60))
    def advance(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)

    # --- the operator's runs ------------------------------------------------------------------

    def _slugs(self, data: st.DataObject) -> list[str]:
        if data.draw(st.booleans()):
            return []
        return [data.draw(st.sampled_from(sorted(self.orgs)))]

    @precondition(lambda self: self.orgs)
    @rule(data=st.data(), ignore_window=st.booleans())
    def run(self, data: st.DataObject, ignore_window: bool) -> None:
        slugs = self._slugs(data)
        self._owe(slugs, ignore_window)
        with freeze_time(self.now, tick=True):
            runner.run_day(self.engine, self.sender, slugs=slugs, ignore_window=ignore_window)
            end = planning.utcnow()
        self._after_run(slugs, end, ignore_window=ignore_window)

    @precondition(lambda self: self.orgs)
    @rule(data=st.data(), offset=st.sampled_from([-2, -1, 0, 1, 2]), ignore_window=st.booleans())
    def run_for_date(self, data: st.DataObject, offset: int, ignore_window: bool) -> None:
        """``reminders run --date D``: for an organization whose today is not D, nothing is sent
        and nothing written; for one whose today it is, it is a plain run."""
        slugs = self._slugs(data)
        anchor = self.orgs[slugs[0] if slugs else sorted(self.orgs)[0]]
        on_date = planning.local_date(self.now, anchor.tz) + timedelta(days=offset)
        chosen = [self.orgs[s] for s in slugs] if slugs else list(self.orgs.values())
        other = [o for o in chosen if planning.local_date(self.now, o.tz) != on_date]
        same = [o.slug for o in chosen if o not in other]
        if same:
            self._owe(same, ignore_window)
        before = _ledger(self.engine, [o.id for o in other])
        seen = len(self.provider.texts)
        with freeze_time(self.now, tick=True):
            runner.run_day(
                self.engine, self.sender, slugs=slugs, on_date=on_date, ignore_window=ignore_window
            )
            end = planning.utcnow()
        if _ledger(self.engine, [o.id for o in other]) != before:
            self.broken("R3", f"a run for {on_date} changed the ledger of {other[0].slug}")
        for t in self.provider.texts[seen:]:
            sub = self.by_phone.get(t.to)
            if sub is not None and sub.org in other:
                self.broken("R3", f"a run for {on_date} texted {sub.ext} of {sub.org.slug}")
        self._after_run(same, end, ignore_window=ignore_window, only=bool(same))

    @precondition(lambda self: self.orgs)
    @rule(data=st.data(), offset=st.sampled_from([None, -1, 1]), ignore_window=st.booleans())
    def dry_run(self, data: st.DataObject, offset: int | None, ignore_window: bool) -> None:
        slugs = self._slugs(data)
        on_date = None
        if offset is not None:
            on_date = planning.local_date(self.now, "UTC") + timedelta(days=offset)
        before = _ledger(self.engine, None)
        seen = len(self.provider.texts)
        with freeze_time(self.now, tick=True):
            runner.dry_run(
                self.engine,
                now=planning.utcnow(),
                slugs=slugs,
                on_date=on_date,
                ignore_window=ignore_window,
            )
        if _ledger(self.engine, None) != before or len(self.provider.texts) != seen:
            self.broken("dry-run", "a dry run wrote to the ledger or sent a text")

    @precondition(lambda self: self.orgs and self.engine.dialect.name == "postgresql")
    @rule(ignore_window=st.booleans())
    def two_runs_at_once(self, ignore_window: bool) -> None:
        self._owe([], ignore_window)
        second = self._new_sender()
        errors: list[BaseException] = []

        def go(sender: Sender) -> None:
            try:
                runner.run_day(self.engine, sender, ignore_window=ignore_window)
            except BaseException as exc:
                errors.append(exc)

        with freeze_time(self.now, tick=True):
            threads = [threading.Thread(target=go, args=(s,)) for s in (self.sender, second)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            end = planning.utcnow()
        second.close()
        assert not errors, errors
        self._after_run([], end, ignore_window=ignore_window)

    # --- the reference model ------------------------------------------------------------------

    def _eligible(self, sub: Sub) -> bool:
        """May be texted now."""
        return sub.valid and sub.active and not sub.opted_out

    def _owed_check(self, sub: Sub) -> bool:
        """Must get a text once owed: eligible, and nothing stopped this expiry for good."""
        return self._eligible(sub) and not sub.failing and sub.expires_on not in sub.stopped

    def _in_window(self, org: Org, at: datetime) -> bool:
        return planning.in_send_window(at, org.tz, parse_window(org.window))

    def _owe(self, slugs: list[str], ignore_window: bool) -> None:
        """A run inside the window while a reminder is due: the customer is owed a text."""
        for sub in self.subs.values():
            if slugs and sub.org.slug not in slugs:
                continue
            if not (ignore_window or self._in_window(sub.org, self.now)):
                continue
            days_left = (sub.expires_on - planning.local_date(self.now, sub.org.tz)).days
            if self._owed_check(sub) and planning.due_lead(days_left, sub.org.leads) is not None:
                self.owed.add((sub.id, sub.expires_on))

    def _after_run(
        self, slugs: list[str], end: datetime, *, ignore_window: bool, only: bool = True
    ) -> None:
        """R6: a manual run returns with nothing due left behind: what is still ``pending`` waits
        for a retry (seconds ahead, with when) or for the window, never for a sender's slots."""
        self._check_new_texts(ignore_window)
        if not only:
            return
        chosen = [self.orgs[s] for s in slugs] if slugs else list(self.orgs.values())
        ids = [o.id for o in chosen]
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    Reminder.id, Reminder.org_id, Reminder.reason, Reminder.next_attempt_at
                ).where(Reminder.status == "pending", Reminder.org_id.in_(ids))
            ).all()
        for rid, org_id, reason, at in rows:
            org = next(o for o in chosen if o.id == org_id)
            if not (ignore_window or self._in_window(org, self.now)):
                continue
            if at is None or (at <= end + timedelta(seconds=5) and reason != "retrying"):
                self.broken(
                    "R6",
                    f"row {rid} of {org.slug} left pending and due by a run "
                    f"(next attempt {at}, run ended {end})",
                )
            elif ignore_window and reason != "retrying":
                self.broken("R4", f"row {rid} of {org.slug} still held after --ignore-window")

    def _check_new_texts(self, ignore_window: bool) -> None:
        texts = self.provider.texts[self.seen :]
        self.seen = len(self.provider.texts)
        if not texts:
            return
        with self.engine.connect() as conn:
            rows = {
                r.provider_message_id: r
                for r in conn.execute(
                    select(
                        Reminder.provider_message_id,
                        Reminder.lead_days,
                        Reminder.days_left,
                        Reminder.expires_on,
                        Reminder.subscription_id,
                    ).where(Reminder.provider_message_id.in_([t.message_id for t in texts]))
                )
            }
        for t in texts:
            self._check_text(t, rows.get(t.message_id), ignore_window)

    def _check_text(self, t: Text, row: Any, ignore_window: bool) -> None:
        sub = self.by_phone.get(t.to)
        if sub is None:
            self.broken("R5", f"a text to {t.to} that no subscription has")
            return
        if "None" in t.body:
            self.broken("R7", f"{sub.ext} got a text with None: {t.body!r}")
        marker = MARKER.match(t.body)
        if marker:
            ext, days, lead, expires = marker.groups()
            days_left, text_lead = int(days), int(lead)
        else:
            plain = DEFAULT_FORM.search(t.body)
            if plain is None:
                self.broken("R7", f"{sub.ext} got a text that is neither form: {t.body!r}")
                return
            ext, phrase, n, expires = plain.groups()
            days_left = (
                0 if phrase.endswith("today") else 1 if phrase.endswith("tomorrow") else int(n)
            )
            text_lead = row.lead_days if row is not None else -1
        expiry = date.fromisoformat(expires)
        today = planning.local_date(t.at, sub.org.tz)
        true_left = (expiry - today).days
        if row is None:
            self.broken("R1", f"{sub.ext}: a text with no ledger row ({t.message_id})")
            return
        if ext != sub.ext or expiry != row.expires_on or row.subscription_id != sub.id:
            self.broken("R3", f"{sub.ext}: a text naming another subscription or expiry")
        if not self._eligible(sub):
            self.broken(
                "R5",
                f"{sub.ext} texted while not eligible (active={sub.active}, "
                f"opted out={sub.opted_out}, valid={sub.valid})",
            )
        if expiry != sub.expires_on:
            self.broken(
                "R3", f"{sub.ext} texted for expiry {expiry} after renewal to {sub.expires_on}"
            )
        if days_left != true_left or row.days_left != true_left:
            self.broken(
                "R3",
                f"{sub.ext} told {days_left} days left (ledger {row.days_left}) "
                f"on {today} for {expiry}: true is {true_left}",
            )
        want = expected_lead(true_left, sub.org.leads)
        if want is None:
            self.broken("R5", f"{sub.ext} texted after expiry ({true_left} days left)")
        elif text_lead != want or row.lead_days != want:
            self.broken(
                "R3",
                f"{sub.ext} sent as lead {row.lead_days} with {true_left} days "
                f"left; lead {want} is due",
            )
        if not (ignore_window or self._in_window(sub.org, t.at)):
            self.broken(
                "R4",
                f"{sub.ext} texted at {t.at.astimezone(planning.zone(sub.org.tz))}"
                f" outside {sub.org.window}",
            )
        key = (sub.id, expiry)
        history = self.sent.setdefault(key, [])
        if any(lead == row.lead_days for _, lead, _ in history):
            self.broken("R1", f"{sub.ext} texted twice for lead {row.lead_days} of {expiry}")
        if any(left <= true_left for left, _, _ in history):
            self.broken(
                "R2",
                f"{sub.ext} texted {true_left} days left after "
                f"{[h[0] for h in history]} for {expiry}",
            )
        history.append((true_left, row.lead_days, t.at))
        self.owed.discard(key)

    @invariant()
    def nothing_lost_and_every_skip_justified(self) -> None:
        """R5: a customer owed a text has had one or still has one waiting; every skip has a
        reason the model agrees with."""
        if not self.subs:
            return
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    Reminder.id,
                    Reminder.subscription_id,
                    Reminder.expires_on,
                    Reminder.status,
                    Reminder.reason,
                    Reminder.days_left,
                    Reminder.updated_at,
                )
            ).all()
        by_key: dict[tuple[int, date], list[Any]] = {}
        for r in rows:
            by_key.setdefault((r.subscription_id, r.expires_on), []).append(r)
        subs = {s.id: s for s in self.subs.values()}
        for (sid, expiry), group in by_key.items():
            sub = subs[sid]
            for r in group:
                if r.status == "skipped":
                    self._check_skip(sub, expiry, r, group)
        for sid, expiry in sorted(self.owed):
            sub = subs[sid]
            if not self._owed_check(sub) or expiry != sub.expires_on:
                continue
            today = planning.local_date(self.now, sub.org.tz)
            if (expiry - today).days < 0:
                continue
            waiting = [
                r
                for r in by_key.get((sid, expiry), [])
                if r.status in ("pending", "sending", "unknown")
            ]
            if not waiting and not self.sent.get((sid, expiry)):
                statuses = [(r.status, r.reason) for r in by_key.get((sid, expiry), [])]
                self.broken(
                    "R5",
                    f"{sub.ext} of {sub.org.slug} was due a text for {expiry} "
                    f"and has none sent or waiting: {statuses}",
                )

    def _check_skip(self, sub: Sub, expiry: date, r: Any, group: list[Any]) -> None:
        reason = (r.reason or "").split(":")[0]
        if reason not in SKIP_REASONS:
            if reason == "stale":
                nearer = [g for g in group if g.id != r.id and g.status != "skipped"]
                if nearer:
                    return
            self.broken("R5", f"{sub.ext} skipped for {r.reason!r}")
            return
        when = r.updated_at
        today = planning.local_date(when, sub.org.tz)
        if reason == "expired" and (expiry - today).days >= 0:
            self.broken(
                "R5", f"{sub.ext} skipped as expired with {(expiry - today).days} days left"
            )
        elif reason == "superseded":
            others = [g for g in group if g.id != r.id and g.status != "skipped"]
            if not others:
                self.broken("R5", f"{sub.ext} skipped as superseded with no other reminder")
        elif reason == "invalid_phone" and sub.valid:
            self.broken("R5", f"{sub.ext} skipped as invalid_phone with a valid number")


def _ledger(engine: Engine, org_ids: list[int] | None) -> list[tuple[Any, ...]]:
    """Every column of every row (of these organizations): a dry run must leave it as it was."""
    stmt = select(*Reminder.__table__.c).order_by(Reminder.id)
    if org_ids is not None:
        stmt = stmt.where(Reminder.org_id.in_(org_ids))
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(stmt)]


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_days_rules_hold_under_everything_an_operator_does(
    backend: str, request: pytest.FixtureRequest
) -> None:
    DayRules.engine = request.getfixturevalue(
        f"{backend}_engine" if backend == "sqlite" else "pg_engine"
    )
    try:
        run_state_machine_as_test(
            DayRules, settings=settings(settings.default, max_examples=EXAMPLES)
        )
    finally:
        if SURVEY:
            print(f"\n{backend}: rules broken: {sorted(BROKEN)}")
            for name, kinds in sorted(BROKEN.items()):
                for message in kinds.values():
                    print(f"  {name}: {message}")
            BROKEN.clear()

"""The send path's promises, kept by real workers sending through the Twilio adapter over HTTP.

Every test here starts workers with the production command and points ``SMS_PROVIDER=twilio``
at the in-process fake Messages API, whose record (who got what, from which sender, when it
arrived) is what the assertions read: a text counts when Twilio accepted it, not when the
ledger says so.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import Engine, select

from app.db.models import Reminder
from app.domain.planning import utcnow
from app.tasks.client import enqueue_day
from app.tasks.scheduler import reconcile_unknown
from tests.factories import make_org
from tests.ledger_rows import get_row, make_row
from tests.tasks.support import (
    ROOT,
    beat,
    most_in_one_second,
    rabbitmq_vhost,
    seed_due,
    status_counts,
    twilio_env,
    wait_for,
    worker,
    worker_env,
)
from tests.twilio_fake import FakeTwilio, Recorded

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REMINDERS = str(Path(sys.executable).with_name("reminders"))
ALL_DAY = "00:00-00:00"
RELEASED = re.compile(r"sweep: (\d+) texts left in sending by a dead worker; released")
# Celery's own line for a finished task, in the workers' log format (app.logs.TEXT_FORMAT).
SWEEP_DONE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO celery\.app\.trace: "
    r"Task app\.tasks\.scheduler\.sweep\[[^\]]+\] succeeded",
    re.MULTILINE,
)


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    # Answers after 100 ms, about what the real API takes across the internet.
    with FakeTwilio(delay=0.1) as server:
        yield server


def _accepted(fake: FakeTwilio) -> list[Recorded]:
    with fake._lock:
        return list(fake.messages)


def _texts_per_number(fake: FakeTwilio) -> Counter[str]:
    return Counter(m.to for m in _accepted(fake))


def _creates(fake: FakeTwilio) -> int:
    with fake._lock:
        return sum(1 for method, _, _ in fake.requests if method == "POST")


def _most_per_second_by_sender(fake: FakeTwilio) -> dict[str, int]:
    arrivals: dict[str, list[float]] = {}
    for m in _accepted(fake):
        arrivals.setdefault(str(m.from_ or m.messaging_service_sid), []).append(m.received)
    return {sender: most_in_one_second(times) for sender, times in arrivals.items()}


def _assert_each_texted_once(fake: FakeTwilio, phones: list[str]) -> None:
    texts = _texts_per_number(fake)
    twice = sorted(p for p, n in texts.items() if n > 1)
    missing = sorted(set(phones) - set(texts))
    assert not twice and not missing, (
        f"{len(twice)} customers texted more than once (e.g. {twice[:5]}), "
        f"{len(missing)} never texted (e.g. {missing[:5]})"
    )
    assert set(texts) == set(phones)


def _segments(engine: Engine) -> set[int | None]:
    with engine.connect() as conn:
        return set(conn.execute(select(Reminder.segments).distinct()).scalars())


@pytest.mark.timeout(420)
def test_a_crash_costs_only_the_texts_in_flight(
    pg_engine: Engine, celery_app: Celery, env: dict[str, str], tmp_path: Path, fake: FakeTwilio
) -> None:
    """SIGKILL mid-day: a new worker and beat finish the day, every customer texted once, and
    only the texts the dead worker had in flight (at most SMS_CONCURRENCY per process) go
    through reconciliation, with the beat's own 30 s safe delay."""
    n, concurrency, processes = 1500, 8, 2
    org = make_org(pg_engine, "acme", now=utcnow(), send_window=ALL_DAY)
    phones = seed_due(pg_engine, org, n, today=utcnow().date())
    env.update(
        twilio_env(fake),
        SMS_RATE_PER_SECOND="20",  # the day takes over a minute: room to kill it mid-way
        SMS_CONCURRENCY=str(concurrency),
        REMINDER_STALE_SENDING_SECONDS="30",
        REMINDER_RECONCILE_DELAY_SECONDS="30",
        REMINDER_TICK_SECONDS="2",
    )
    with worker(env, tmp_path, name="doomed", concurrency=processes) as doomed:
        enqueue_day(on_date=None, org_slugs=["acme"])
        wait_for(
            lambda: len(_accepted(fake)) >= 0.3 * n, timeout=120, what="30% of the day accepted"
        )
        doomed.kill()
    killed_at = time.monotonic()
    at_kill = len(_accepted(fake))
    assert at_kill < n, "the worker finished before it was killed; make the day larger"
    left_sending = status_counts(pg_engine).get("sending", 0)

    unknown_seen: set[int] = set()
    with worker(env, tmp_path, name="heir", concurrency=processes) as heir, beat(env, tmp_path):
        while status_counts(pg_engine) != {"sent": n}:
            assert time.monotonic() - killed_at < 240, (
                f"not all sent 240 s after the kill: {status_counts(pg_engine)}"
            )
            with pg_engine.connect() as conn:
                unknown_seen.update(
                    conn.execute(select(Reminder.id).where(Reminder.status == "unknown")).scalars()
                )
            time.sleep(0.5)
        logs = heir.text()
    finished_after = time.monotonic() - killed_at

    _assert_each_texted_once(fake, phones)
    released = sum(int(k) for k in RELEASED.findall(logs))
    reconciled = max(released, len(unknown_seen))
    assert reconciled <= concurrency * processes, (
        f"{reconciled} texts went through reconciliation (sweep released {released}, "
        f"{len(unknown_seen)} rows seen unknown; {left_sending} rows were in sending at the "
        f"kill, {at_kill} texts accepted by then); at most {concurrency} x {processes} "
        f"= {concurrency * processes} can be in flight (the day finished {finished_after:.0f} s "
        "after the kill)"
    )


@pytest.mark.timeout(180)
def test_next_day_reconciliation_finds_the_text_twilio_accepted(
    pg_engine: Engine, celery_app: Celery, env: dict[str, str], tmp_path: Path, fake: FakeTwilio
) -> None:
    """Yesterday's texts whose answer was lost (one left ``unknown``, one left in ``sending`` by
    a dead worker) are matched at Twilio by their stored body, sender and claim time, not by
    what a text made today would say (a day fewer left): both become ``sent`` with Twilio's id
    and nobody is texted again."""
    sender = "+15005550111"
    now = utcnow()
    yesterday = now.date() - timedelta(days=1)
    # Claimed just before yesterday's midnight; Twilio accepted each a second later.
    claimed = datetime.combine(yesterday, datetime.min.time().replace(hour=23, minute=58), UTC)
    org = make_org(pg_engine, "acme", now=now, send_window=ALL_DAY, sender=sender)
    # Planned yesterday, 3 days before the expiry: today's truth is 2 days left.
    body = "Hi Pat, your Fiber plan with Acme ends in 3 days. Renew to stay connected."
    rows: dict[str, tuple[int, str]] = {}
    for phone, status in (("+14155550101", "unknown"), ("+14155550102", "sending")):
        rid = make_row(
            pg_engine,
            org,
            phone=phone,
            body=body,
            status=status,
            today=yesterday,
            claimed_at=claimed,
            reason="outcome_unknown" if status == "unknown" else None,
            segments=1,
            encoding="GSM-7",
        )
        message = fake.add_message(
            phone, body, from_=sender, created=claimed + timedelta(seconds=1), status="delivered"
        )
        rows[phone] = (rid, message.sid)
    before = get_row(pg_engine, rows["+14155550101"][0])
    assert (before.local_date, before.days_left) == (yesterday, 3)

    env.update(
        twilio_env(fake),
        REMINDER_TICK_SECONDS="2",
        REMINDER_STALE_SENDING_SECONDS="30",
        REMINDER_RECONCILE_DELAY_SECONDS="5",
    )

    def settled() -> bool:
        return all(get_row(pg_engine, rid).status == "sent" for rid, _ in rows.values())

    with worker(env, tmp_path), beat(env, tmp_path):
        deadline = time.monotonic() + 60
        while not settled():
            assert time.monotonic() < deadline, f"not settled: {status_counts(pg_engine)}"
            # The beat's task, with the configured safe delay (long passed for these rows).
            reconcile_unknown.apply_async()
            time.sleep(2)
        time.sleep(6)  # a few more sweeps: none may send these texts again

    for phone, (rid, sid) in rows.items():
        row = get_row(pg_engine, rid)
        assert (row.status, row.provider_message_id) == ("sent", sid), phone
        assert row.body == body, "the ledger keeps the text that was sent"
        assert len(fake.sent_to(phone)) == 1, f"{phone} was texted again"


@pytest.mark.timeout(300)
def test_an_outage_longer_than_the_retry_budget_does_not_use_up_the_day(
    pg_engine: Engine, celery_app: Celery, env: dict[str, str], tmp_path: Path, fake: FakeTwilio
) -> None:
    """Twilio answers 503 for 40 s, over twice what five attempts with 1 s backoff take: no text is
    given up, every customer gets one once Twilio is back, and `reminders status` says the
    circuit is open while it is down."""
    n, outage_seconds = 200, 40.0
    org = make_org(pg_engine, "acme", now=utcnow(), send_window=ALL_DAY)
    phones = seed_due(pg_engine, org, n, today=utcnow().date())
    env.update(
        twilio_env(fake),
        SMS_RATE_PER_SECOND="50",
        SMS_RETRY_BACKOFF_SECONDS="1",
        SMS_MAX_ATTEMPTS="5",
        REMINDER_TICK_SECONDS="2",
    )
    fake.outage(status=503)
    outage_began = time.monotonic()
    statuses: list[str] = []

    def circuit_reported() -> bool:
        return any("circuit" in s.lower() and "open" in s.lower() for s in statuses)

    with worker(env, tmp_path), beat(env, tmp_path):
        enqueue_day(on_date=None, org_slugs=["acme"])
        wait_for(lambda: _creates(fake) > 0, timeout=60, what="the first send during the outage")
        first_refused = time.monotonic()
        next_status = first_refused + 3.0
        while (down_for := time.monotonic() - outage_began) < outage_seconds:
            if not circuit_reported() and time.monotonic() >= next_status and len(statuses) < 4:
                statuses.append(_reminders_status(env))
                next_status = time.monotonic() + 10.0
            counts = status_counts(pg_engine)
            assert not counts.get("failed"), (
                f"{counts['failed']} texts failed {down_for:.0f} s into the outage "
                f"({_creates(fake)} refused sends; counts {counts}); `reminders status` "
                f"during the outage said: {statuses!r}"
            )
            time.sleep(0.5)
        refused = _creates(fake)
        fake.recover()
        recovered = time.monotonic()
        deadline = recovered + 120
        while status_counts(pg_engine) != {"sent": n}:
            counts = status_counts(pg_engine)
            assert not counts.get("failed"), f"texts failed after the recovery: {counts}"
            assert time.monotonic() < deadline, f"not all sent 120 s after recovery: {counts}"
            time.sleep(0.5)
    _assert_each_texted_once(fake, phones)
    assert circuit_reported(), (
        f"`reminders status` did not report an open circuit during the outage "
        f"({refused} sends refused in {outage_seconds:.0f} s); it said: {statuses!r}"
    )


def _reminders_status(env: dict[str, str]) -> str:
    done = subprocess.run(
        [REMINDERS, "status"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    return f"(exit {done.returncode}) {done.stdout}{done.stderr}"


def _orgs_with_own_senders(
    engine: Engine, n: int, per_org: int, *, rate: int, prefix: str
) -> list[str]:
    """``n`` organizations (send time 00:00, all-day window), each its own sender ``prefix``+k
    at ``rate``, each with ``per_org`` customers due; their phones."""
    now = utcnow()
    phones: list[str] = []
    for k in range(n):
        org = make_org(
            engine,
            f"org{k}",
            now=now,
            send_time="00:00",
            send_window=ALL_DAY,
            sender=f"{prefix}{k}",
            rate=float(rate),
        )
        phones += seed_due(engine, org, per_org, today=now.date(), start=k * per_org)
    return phones


@pytest.mark.timeout(240)
def test_two_worker_hosts_on_rabbitmq_share_each_senders_rate(
    pg_engine: Engine, pg_url: str, broker: str, tmp_path: Path, fake: FakeTwilio
) -> None:
    """Two worker instances (as on two hosts) take one RabbitMQ queue and share the per-sender
    limit through one Redis: every text goes once, and no sender has more than its 10 texts
    (single segments) in any one-second window at Twilio."""
    rate, per_org = 10, 100
    phones = _orgs_with_own_senders(pg_engine, 3, per_org, rate=rate, prefix="+1500555020")
    with rabbitmq_vhost() as amqp_url:
        base = worker_env(pg_url=pg_url, broker=amqp_url, redis_url=broker, tmp=tmp_path)
        base.update(twilio_env(fake), SMS_RATE_PER_SECOND=str(rate), REMINDER_TICK_SECONDS="2")
        # Each instance its own heartbeat file: one's ready is not taken for the other's.
        hosts = [
            {**base, "WORKER_HEARTBEAT_FILE": str(tmp_path / f"{name}.heartbeat")}
            for name in ("host1", "host2")
        ]
        with (
            worker(hosts[0], tmp_path, name="host1") as host1,
            worker(hosts[1], tmp_path, name="host2") as host2,
            beat(base, tmp_path),  # starts the three days (send time 00:00) on its first tick
        ):
            wait_for(
                lambda: status_counts(pg_engine) == {"sent": len(phones)},
                timeout=120,
                what=f"all sent (now {status_counts(pg_engine)})",
            )
            logs = {"host1": host1.text(), "host2": host2.text()}
    _assert_each_texted_once(fake, phones)
    idle = [h for h, text in logs.items() if not re.search(r"batch of \d+: sent=[1-9]", text)]
    assert not idle, f"{idle} sent nothing: the day did not run on both instances"
    assert _segments(pg_engine) == {1}, "the rate is in segments: these texts must be single"
    worst = _most_per_second_by_sender(fake)
    assert set(worst) == {f"+1500555020{k}" for k in range(3)}
    assert max(worst.values()) <= rate, f"most texts in one second per sender: {worst}"


@pytest.mark.timeout(180)
def test_every_sender_is_busy_at_once(
    pg_engine: Engine, celery_app: Celery, env: dict[str, str], tmp_path: Path, fake: FakeTwilio
) -> None:
    """Four senders at 5/s each, 60 texts each, one worker with two processes: all four send
    side by side from the start (20/s together: 15 s for the day at the limiter's margin, not
    48 s one after another, nor 30 s two at a time), each within its rate, and the beat's sweep
    keeps its tick meanwhile."""
    rate, per_org, senders, tick = 5, 60, 4, 2.0
    phones = _orgs_with_own_senders(pg_engine, senders, per_org, rate=rate, prefix="+1500555030")
    env.update(twilio_env(fake), SMS_RATE_PER_SECOND=str(rate), REMINDER_TICK_SECONDS=str(tick))
    # The beat starts the four days (send time 00:00) on its first tick.
    with worker(env, tmp_path, concurrency=2) as w, beat(env, tmp_path):
        wait_for(
            lambda: status_counts(pg_engine) == {"sent": len(phones)},
            timeout=90,
            what=f"all sent (now {status_counts(pg_engine)})",
        )
        logs = w.text()
    _assert_each_texted_once(fake, phones)

    spans: dict[str, list[datetime]] = {}
    for m in _accepted(fake):
        spans.setdefault(str(m.from_), []).append(m.date_created)
    first = min(min(times) for times in spans.values())
    last = max(max(times) for times in spans.values())
    shown = ", ".join(
        f"{sender} +{(min(t) - first).total_seconds():.1f}..+{(max(t) - first).total_seconds():.1f}"
        for sender, t in sorted(spans.items())
    )
    late = [s for s, t in spans.items() if (min(t) - first).total_seconds() > 3]
    assert not late, f"senders that started over 3 s after the day's first text: {shown} (s)"
    took = (last - first).total_seconds()
    assert took <= 20, f"the day took {took:.1f} s ({shown}); side by side it takes about 15 s"
    worst = _most_per_second_by_sender(fake)
    assert len(worst) == senders and max(worst.values()) <= rate, worst

    sweeps = [
        datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").astimezone()
        for stamp in SWEEP_DONE.findall(logs)
    ]
    marks = [first, *(t for t in sweeps if first < t < last), last]
    gap = max((b - a).total_seconds() for a, b in pairwise(marks))
    assert gap <= 4 * tick, (
        f"no sweep finished for {gap:.1f} s while texts were going out (tick {tick:g} s; "
        f"{len(marks) - 2} sweeps in the {took:.1f} s of sending): sends kept the beat's "
        "tasks waiting"
    )

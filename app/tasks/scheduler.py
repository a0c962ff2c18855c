"""The Celery app (``celery -A app.tasks.scheduler worker|beat``) and its tasks.

Tasks are thin: they open a transaction, call a plain function (app.services), commit, and only
then enqueue follow-up work. Arguments are ledger ids, slugs and ISO dates. Sending twice is
prevented by the ledger's conditional claim, not by the broker: any task here may run twice.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from concurrent.futures import Future
from datetime import date, datetime, timedelta
from typing import Any, NoReturn

import click
from celery import Celery, bootsteps, signals
from sqlalchemy import Connection, Engine

from app.config import celery_config
from app.db import early_receipts, ledger
from app.domain.planning import utcnow
from app.errors import ConfigError
from app.metrics import worker as worker_metrics
from app.providers import check_provider_settings
from app.services import dispatch, event_delivery
from app.services.engine import OrgConfig, load_orgs, plan_day
from app.services.runner import preview_plan, split_by_date
from app.services.sender import Busy, SendReport
from app.settings import get_settings
from app.tasks import runtime
from app.tasks.kick import EventsKick

log = logging.getLogger("app.tasks")


def refuse_to_start(exc: ConfigError) -> NoReturn:
    """One line naming what is wrong, then out: a misconfigured service must not half-run."""
    sys.stderr.write(f"error: {exc}\n")
    sys.stderr.flush()
    raise SystemExit(2)


try:
    _settings = get_settings()
except ConfigError as _exc:
    refuse_to_start(_exc)

app = Celery("reminders")
app.conf.update(celery_config.build(_settings))

app.user_options["worker"].add(
    click.Option(
        ["--sms-provider-factory"],
        default=None,
        help="module:callable building the SMS provider from the settings (tests, benchmarks).",
    )
)


class _ProviderFactoryStep(bootsteps.Step):  # type: ignore[misc]
    """Carries ``--sms-provider-factory`` into the runtime before the pool forks."""

    def __init__(self, parent: Any, sms_provider_factory: str | None = None, **options: Any):
        if not sms_provider_factory:
            try:
                check_provider_settings(_settings)
            except ConfigError as exc:
                refuse_to_start(exc)
        runtime.set_provider_factory(sms_provider_factory)
        super().__init__(parent, **options)


app.steps["worker"].add(_ProviderFactoryStep)


class _MetricsStep(bootsteps.Step):  # type: ignore[misc]
    """WORKER_METRICS_PORT: the main process serves the pool's counters, set up before the
    pool forks (multiprocess mode must be on before the first value is made)."""

    def __init__(self, parent: Any, **options: Any):
        port = _settings.worker_metrics_port
        if port is not None:
            try:
                path = worker_metrics.start(port=port, directory=_settings.prometheus_multiproc_dir)
            except ConfigError as exc:
                refuse_to_start(exc)
            log.info("worker metrics on port %d (multiprocess directory %s)", port, path)
        super().__init__(parent, **options)


app.steps["worker"].add(_MetricsStep)


#: A send task waits this long for room in its process, then hands its batch back to the broker
#: to come again after BUSY_COUNTDOWN_SECONDS (a pool process is never held by a busy sender).
ADMIT_WITHIN_SECONDS = 0.5
BUSY_COUNTDOWN_SECONDS = 1


def _task(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``app.task`` with a type (Celery ships none)."""
    decorator: Callable[[Callable[..., Any]], Any] = app.task(**options)
    return decorator


def _limits(kind: str) -> dict[str, int]:
    soft, hard = celery_config.TIME_LIMITS[kind]
    return {"soft_time_limit": soft, "time_limit": hard}


def _enqueue_sends(ids: list[int], on_date: str | None) -> None:
    send_reminders.apply_async(args=[ids], kwargs={"date": on_date})


def _hand_over(
    conn: Connection, ids: list[int], on_date: str | None, *, lost_before: datetime | None = None
) -> int:
    """Mark these rows handed to the broker, commit, then enqueue them, batch by batch."""
    size = runtime.current().settings.send_batch_size
    taken = 0
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        handed = ledger.hand_over(conn, chunk, now=utcnow(), lost_before=lost_before)
        conn.commit()
        if handed:
            _enqueue_sends(handed, on_date)
            taken += len(handed)
    return taken


def _hand_over_due(
    conn: Connection,
    on_date: str | None = None,
    *,
    org_ids: list[int] | None = None,
    lost_before: datetime | None = None,
) -> int:
    """The due rows (of these organizations, or all) with no message in the broker, taking
    turns between organizations; with ``lost_before`` (the sweeper) also those handed over
    before it, presumed lost."""
    order = dispatch.due_order(conn, now=utcnow(), org_ids=org_ids, lost_before=lost_before)
    conn.commit()
    return _hand_over(conn, order, on_date, lost_before=lost_before)


def _requeue_due(*, lease: float) -> int:
    """The sweeper's hand-over, in batches; each batch committed before it is sent."""
    rt = runtime.current()
    with rt.engine.connect() as conn:
        return _hand_over_due(conn, lost_before=utcnow() - timedelta(seconds=lease))


@_task(name="app.tasks.scheduler.dispatch_due", **_limits("sweep"))
def dispatch_due() -> int:
    """Beat, every tick: start each organization's day whose local send time has passed."""
    rt = runtime.current()
    with rt.engine.begin() as conn:
        starts = dispatch.start_due_days(conn, now=utcnow())
    for start in starts:
        log.info("day starting org=%s date=%s task=%s", start.slug, start.local_date, start.task_id)
        send_payment_reminder_sms.apply_async(
            kwargs={"date": start.local_date.isoformat(), "org": start.slug},
            task_id=start.task_id,
        )
    return len(starts)


@_task(
    name="app.tasks.scheduler.send_payment_reminder_sms", ignore_result=False, **_limits("daily")
)
def send_payment_reminder_sms(
    date: str | None = None, org: str | list[str] | None = None
) -> dict[str, Any]:
    """The daily run: plan the day set-based, page by page; each page is committed and its
    rows enqueued in send batches while the next page is rendered.

    ``org`` is a slug or a list of slugs (default: every active organization). Due retries of
    earlier days go too. ``date`` (ISO) is the local date the run is for: an organization
    whose today it is not (a day started before midnight and run after it, a hand-made call)
    is planned and previewed for it, with nothing written or sent (R3); its later days catch
    up what is still due.
    """
    rt = runtime.current()
    on_date = _parse_date(date)
    slugs = [org] if isinstance(org, str) else list(org or [])
    now = utcnow()
    with rt.engine.connect() as conn:
        everyone = load_orgs(conn, ledger.active_org_ids(conn, slugs or None))
        missing = sorted(set(slugs) - {o.slug for o in everyone.values()})
        if missing:
            log.error("daily run: no active organization %s; ignored", ", ".join(missing))
        orgs, previewed = split_by_date(everyone, now=now, on_date=on_date)
        preview = _preview_elsewhere(rt.engine, previewed, now=now, on_date=on_date)

        # First what already waits: retries of earlier days, rows put back, rows a crashed
        # run planned.
        enqueued = _hand_over_due(conn, date, org_ids=list(orgs)) if orgs else 0

        def send_page(ids: list[int]) -> None:
            # Planned rows are inserted marked as handed over: enqueue them, nothing to write.
            nonlocal enqueued
            size = rt.settings.send_batch_size
            for start in range(0, len(ids), size):
                _enqueue_sends(ids[start : start + size], date)
            enqueued += len(ids)

        # Texts are rendered as they leave (their claim writes them): the plan is decisions.
        report = plan_day(conn, now=now, orgs=orgs, on_page=send_page, render=False)
        days = {o.id: o.today(now) for o in orgs.values()}
        # A day whose date has passed is done with: nothing restarts it.
        dispatch.mark_planned(
            conn, org_days={**days, **{o.id: o.today(now, on_date) for o in previewed.values()}}
        )
        conn.commit()
    for o in orgs.values():
        log.info("day started org=%s date=%s", o.slug, days[o.id].isoformat())
    log.info(
        "daily run planned=%d skipped=%d failed=%d rendered=%d enqueued=%d orgs=%d",
        report.planned,
        report.skipped,
        report.failed,
        report.rendered,
        enqueued,
        len(orgs),
    )
    return {
        "planned": report.planned,
        "skipped": report.skipped,
        "failed": report.failed,
        "enqueued": enqueued,
        "dates": {o.slug: days[o.id].isoformat() for o in orgs.values()},
        "previewed": {o.slug: preview.get(o.id, 0) for o in previewed.values()},
    }


def _preview_elsewhere(
    engine: Engine, orgs: dict[int, OrgConfig], *, now: datetime, on_date: date | None
) -> dict[int, int]:
    """Plan other days' organizations in a transaction rolled back; one line each (R3)."""
    if not orgs or on_date is None:
        return {}
    counts = {
        org.id: preview_plan(engine, {org.id: org}, now=now, on_date=on_date).plan.planned
        for org in orgs.values()
    }
    for org in orgs.values():
        log.warning(
            "daily run for %s: it is %s in %s, not that date; planned %d as a preview, "
            "nothing sent for it",
            on_date.isoformat(),
            org.today(now).isoformat(),
            org.slug,
            counts[org.id],
        )
    return counts


@_task(name="app.tasks.scheduler.send_reminders", **_limits("send"))
def send_reminders(ids: list[int], date: str | None = None) -> None:
    """Send these ledger rows; each is claimed (pending -> sending) just before its request.

    The task returns once its rows are prepared and handed to this process's event loop, so
    the process takes the next batch while this one waits for rate-limit slots and answers.
    A process with no room for the batch (SMS_OPEN_BATCHES open, or a second's worth of texts
    queued for the same senders) hands it back to the broker for a moment instead of waiting:
    the pool process is free at once for other senders' batches and for beat's tasks.
    Outcomes are recorded, and the batch logged, as the answers come back.
    """
    rt = runtime.current()
    started = utcnow()
    # ``date`` is kept for messages already queued; a text is always for its organization's
    # local today by the clock (R3).
    try:
        batch = rt.sender.submit_ids(ids, admit_within=ADMIT_WITHIN_SECONDS)
    except Busy:
        send_reminders.apply_async(args=[ids], countdown=BUSY_COUNTDOWN_SECONDS)
        return
    batch.add_done_callback(lambda done: _batch_finished(ids, started, done))


def _batch_finished(ids: list[int], started: datetime, done: Future[SendReport]) -> None:
    """When every outcome of a batch is recorded (on the process's outcome writer thread)."""
    rt = runtime.current()
    rt.batch_done()
    worker_metrics.observe_batch((utcnow() - started).total_seconds())
    try:
        report = done.result()
    except Exception as exc:  # noqa: BLE001 - logged; the sweeper settles the rows
        log.error(
            "batch of %d: outcomes not all recorded (%r); the sweeper settles them", len(ids), exc
        )
        return
    log.info(
        "batch of %d: sent=%d failed=%d skipped=%d retrying=%d unknown=%d held=%d deferred=%d"
        " not-claimed=%d",
        len(ids),
        report.sent,
        report.failed,
        report.skipped,
        report.retrying,
        report.unknown,
        report.held,
        report.deferred,
        report.lost,
    )
    if report.retrying or report.deferred:
        # A retry (or a text deferred to a later slot) due soon goes back to the broker with a
        # short countdown; a later one waits in the ledger for the sweeper (a long countdown
        # would outlive Redis's visibility timeout).
        with rt.engine.connect() as conn:
            waits = dispatch.retry_waits(
                conn,
                ids,
                since=started,
                now=utcnow(),
                max_wait_seconds=celery_config.MAX_COUNTDOWN_SECONDS,
            )
        for seconds, rids in sorted(waits.items()):
            send_reminders.apply_async(args=[sorted(rids)], countdown=seconds)


@_task(name="app.tasks.scheduler.sweep", **_limits("sweep"))
def sweep() -> dict[str, int]:
    """Beat, every tick: nothing waits for a message the broker lost.

    Rows left in ``sending`` by a dead worker become ``unknown`` (settled by reconciliation),
    or ``pending`` when the provider cannot be asked; due ``pending`` rows with no message in
    the broker are enqueued; days whose start was lost are started again; finished days logged;
    status callbacks kept for a message id that never came are purged after a week.
    """
    rt = runtime.current()
    settings = rt.settings
    lease = settings.stale_sending_seconds
    now = utcnow()
    with rt.engine.begin() as conn:
        released = ledger.release_stale_sending(
            conn,
            older_than=now - timedelta(seconds=lease),
            now=now,
            to_status="unknown" if rt.provider.can_reconcile else "pending",
        )
        restarts = dispatch.restart_stalled_days(conn, now=now, lease_seconds=lease)
        finished = dispatch.finish_days(conn, now=now)
        purged = early_receipts.purge(conn, now=now)
    if purged:
        log.info(
            "sweep: %d status callbacks no message of ours matched in %d days; purged",
            purged,
            early_receipts.KEEP.days,
        )
    if released:
        log.warning("sweep: %d texts left in sending by a dead worker; released", released)
    for start in restarts:
        log.warning("sweep: restarting day org=%s date=%s", start.slug, start.local_date)
        send_payment_reminder_sms.apply_async(
            kwargs={"date": start.local_date.isoformat(), "org": start.slug},
            task_id=start.task_id,
        )
    for day in finished:
        log.info(
            "day finished org=%s date=%s %s",
            day.slug,
            day.local_date,
            " ".join(f"{k}={v}" for k, v in sorted(day.counts.items())),
        )
    requeued = _requeue_due(lease=lease)
    if requeued:
        log.info("sweep: enqueued %d due texts", requeued)
    return {"released": released, "requeued": requeued, "restarted": len(restarts)}


@_task(name="app.tasks.scheduler.reconcile_unknown", **_limits("reconcile"))
def reconcile_unknown(safe_delay_seconds: float | None = None) -> dict[str, int]:
    """Beat: settle ``unknown`` and stale ``sending`` rows by asking the provider."""
    from app.services.reconcile import reconcile

    rt = runtime.current()
    report = reconcile(
        rt.engine,
        rt.provider,
        now=utcnow(),
        stale_sending_seconds=rt.settings.stale_sending_seconds,
        safe_delay_seconds=(
            rt.settings.reconcile_delay_seconds
            if safe_delay_seconds is None
            else safe_delay_seconds
        ),
    )
    if report.checked:
        log.info("reconcile: %s", " ".join(f"{k}={v}" for k, v in report.as_dict().items()))
    if report.retried:
        _requeue_due(lease=rt.settings.stale_sending_seconds)
    return report.as_dict()


@_task(name="app.tasks.scheduler.deliver_events", **_limits("events"))
def deliver_events() -> bool:
    """Beat, every tick, and after each commit that wrote events: wake this process's event
    delivery, which runs on a loop thread of its own (app.services.event_delivery.Background)
    so the pool process is free again at once, whatever the endpoints do. True if it started
    one (False: it was already delivering, and looks again before it stops)."""
    rt = runtime.current()
    return event_delivery.background().wake(rt.engine, rt.settings)


def _listen_for_events(**_: object) -> None:
    """Forked pool processes inherit the hook: their commits that wrote events wake this."""
    EventsKick(lambda countdown: deliver_events.apply_async(countdown=countdown)).install()


signals.worker_init.connect(_listen_for_events)


@_task(name="app.tasks.scheduler.cleanup", **_limits("cleanup"))
def cleanup() -> int:
    """Beat, daily: drop ledger rows older than REMINDER_RETENTION_DAYS."""
    rt = runtime.current()
    removed = dispatch.cleanup(rt.engine, now=utcnow(), retention_days=rt.settings.retention_days)
    log.info(
        "cleanup: removed %d ledger rows older than %d days", removed, rt.settings.retention_days
    )
    return removed


def _parse_date(value: str | None) -> date | None:
    return date.fromisoformat(value) if value else None

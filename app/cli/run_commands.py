"""Running and watching: the manual trigger, status counts, the ledger's rows."""

from __future__ import annotations

import sys
import time
from datetime import date
from typing import Any

import click

from app.cli.common import echo_json, engine, make_sender, now, parse_date
from app.db.models import STATUSES
from app.errors import ValidationError
from app.services import dispatch, runner
from app.services import events as event_service
from app.services import orgs as org_service
from app.services.send_test import sent_test_rows
from app.services.sender import SendReport


@click.command("run")
@click.option("--date", "on_date", callback=parse_date, help="Act as if today is YYYY-MM-DD.")
@click.option("--org", "orgs", multiple=True, help="Only this organization (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print what would go out; write nothing.")
@click.option("--ignore-window", is_flag=True, help="Send even outside the send window.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("--enqueue", is_flag=True, help="Hand the day to the Celery workers instead.")
@click.option("--wait", is_flag=True, help="With --enqueue: wait for the day's sends to finish.")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds for --wait.")
def run_cmd(
    on_date: date | None = None,
    orgs: tuple[str, ...] = (),
    dry_run: bool = False,
    ignore_window: bool = False,
    as_json: bool = False,
    enqueue: bool = False,
    wait: bool = False,
    timeout: float = 600.0,
) -> None:
    """Plan today's reminders and send what is due (the manual trigger)."""
    if wait and not enqueue:
        raise ValidationError("--wait goes with --enqueue")
    if enqueue and dry_run:
        raise ValidationError("--dry-run cannot be combined with --enqueue")
    if enqueue:
        _enqueue(on_date, list(orgs), wait=wait, timeout=timeout, as_json=as_json)
        return
    if dry_run:
        summary = runner.dry_run(
            engine(), now=now(), slugs=orgs, on_date=on_date, ignore_window=ignore_window
        )
        if as_json:
            echo_json({**summary.as_dict(), "dry_run": True, "would_send": summary.would_send})
            return
        for item in summary.would_send:
            _echo_would_send(item)
        click.echo(
            f"dry run: {summary.plan.planned} would be planned, {len(summary.would_send)} "
            "due; nothing was written"
        )
        return
    sender = make_sender()
    progress = _Progress()
    try:
        summary = runner.run_day(
            engine(),
            sender,
            slugs=orgs,
            on_date=on_date,
            ignore_window=ignore_window,
            on_progress=progress,
        )
    finally:
        sender.close()
        progress.close()
    if on_date is not None:
        _not_today_notice(on_date, summary.previewed, "planned and previewed for it as a dry run")
    result = summary.as_dict()
    day = None if summary.dry_run else _day(on_date, orgs)
    if as_json:
        echo_json({**result, "day": day} if day is not None else result)
    else:
        _echo_summary(summary, result)
        if day is not None:
            _echo_day(day, on_date)
    if result["failed"]:
        raise click.exceptions.Exit(EXIT_FAILED)


def _day(on_date: date | None, orgs: tuple[str, ...]) -> dict[str, int]:
    with engine().connect() as conn:
        days = dispatch.org_days(conn, org_slugs=orgs, on_date=on_date, now=now())
        return dispatch.day_totals(conn, org_days=days)


def _echo_summary(summary: runner.RunSummary, result: dict[str, Any]) -> None:
    for item in summary.would_send:
        _echo_would_send(item)
    if summary.dry_run:
        click.echo(
            f"dry run: {summary.would_plan} would be planned, {len(summary.would_send)} due; "
            "nothing was written"
        )
        return
    click.echo(
        "planned {planned}, sent {sent}, failed {failed}, skipped {skipped}, "
        "held {held}, retrying {retrying}, unknown {unknown}".format(**result)
        + _when(summary)
    )


# `reminders run` exits with this when some texts failed (a provider refused them, or their
# retries ran out): the run itself finished.
EXIT_FAILED = 3


def _echo_would_send(item: dict[str, Any]) -> None:
    state = "HOLD (outside window)" if item["held"] else "SEND"
    click.echo(f"{state} {item['org']} {item['phone']} [{item['lead_days']}d]: {item['body']}")


def _not_today_notice(on_date: date, todays: dict[str, str], what: str) -> None:
    """R3: one line saying that a --date other than these organizations' today only previews
    (``todays``: slug -> its real today)."""
    if not todays:
        return
    click.echo(
        f"note: {on_date} is not today in {', '.join(sorted(todays))} (today: "
        f"{', '.join(sorted(set(todays.values())))}): {what}; nothing was sent or written "
        "for it",
        err=True,
    )


def _when(summary: runner.RunSummary) -> str:
    """When held texts' windows open and the next retry is due, for the summary line."""
    parts = [
        f"{slug} held until {at:%Y-%m-%d %H:%M} UTC"
        for slug, at in sorted(summary.send.held_until.items())
    ]
    if summary.send.retry_at:
        parts.append(f"next retry {min(summary.send.retry_at):%Y-%m-%d %H:%M:%S} UTC")
    return f" ({'; '.join(parts)})" if parts else ""


class _Progress:
    """Progress on stderr while a run sends: a bar on a terminal, a line every 5 s otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.drawn = False

    def __call__(self, report: SendReport, total: int) -> None:
        done = report.sent + report.failed + report.skipped + report.unknown + report.held
        done += report.retrying + report.lost
        now = time.monotonic()
        if not self.tty:
            if now - self.last >= 5.0 and 0 < done < total:
                click.echo(f"progress: {done} of {total} texts done, {report.sent} sent", err=True)
                self.last = now
            return
        if total == 0 or now - self.last < 0.2:
            return
        self.last = now
        width = 30
        filled = min(width, width * done // total)
        bar = "#" * filled + "-" * (width - filled)
        click.echo(f"\r[{bar}] {done}/{total} done, {report.sent} sent", err=True, nl=False)
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            click.echo("", err=True)


def _enqueue(
    on_date: date | None, orgs: list[str], *, wait: bool, timeout: float, as_json: bool
) -> None:
    from app.tasks.client import enqueue_day, wait_day

    resolved = runner.resolve_orgs(engine(), orgs)  # an unknown slug fails here, before the broker
    if on_date is not None:
        at = now()
        _, previewed = runner.split_by_date(resolved, now=at, on_date=on_date)
        todays = {o.slug: o.today(at).isoformat() for o in previewed.values()}
        _not_today_notice(on_date, todays, "the workers only preview it")
    before = _day(on_date, tuple(orgs)) if wait else None
    task_id = enqueue_day(on_date=on_date, org_slugs=orgs)
    if not wait:
        if as_json:
            echo_json({"task_id": task_id})
        else:
            click.echo(f"enqueued: task {task_id}")
        return
    counts = wait_day(task_id, on_date=on_date, org_slugs=orgs, timeout=timeout, before=before)
    if as_json:
        echo_json({"task_id": task_id, **counts})
        return
    day = counts.pop("day")
    pending = counts.pop("pending", 0) + counts.pop("sending", 0)
    click.echo(
        f"task {task_id}: "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + f", still pending {pending}"
    )
    _echo_day(day, on_date)


def _echo_day(day: dict[str, int], on_date: date | None) -> None:
    """The day's totals, labelled: earlier runs' texts are in them, not in the line above."""
    which = on_date.isoformat() if on_date else "each organization's today"
    click.echo(f"day's totals so far ({which}): " + ", ".join(f"{k} {v}" for k, v in day.items()))


@click.command("status")
@click.option("--date", "on_date", callback=parse_date, help="Only rows planned for this day.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_cmd(on_date: date | None, as_json: bool) -> None:
    """Ledger counts per organization and status."""
    counts = runner.status_counts(engine(), on_date=on_date)
    if as_json:
        echo_json(counts)
        return
    held = runner.held_until(engine())
    marked = runner.undeliverable_counts(engine())
    for slug, by_status in counts.items():
        line = ", ".join(f"{s} {by_status[s]}" for s in STATUSES if s in by_status)
        if slug in held:
            line += f"; held for the window until {held[slug]:%Y-%m-%d %H:%M} UTC"
        if marked.get(slug):
            n = marked[slug]
            line += f"; {n} number{'s' if n != 1 else ''} undeliverable (reminders number clear)"
        click.echo(f"{slug:<16} {line or 'no reminders'}")
    for account, since in sorted(runner.open_circuits(engine()).items()):
        click.echo(
            f"circuit open for {account} since {since:%Y-%m-%d %H:%M:%S} UTC: the provider "
            "fails for every number; texts wait (pending, their retries kept) and one request "
            "at a time probes it"
        )
    with engine().connect() as conn:
        waiting = event_service.delivery_counts(conn)
    pending, dead = waiting.get("pending", 0), waiting.get("dead", 0)
    if pending or dead:
        click.echo(
            f"events: {pending} waiting to be delivered, {dead} dead "
            "(reminders events list --status dead; reminders events replay)"
        )


@click.command("messages")
@click.option("--date", "on_date", callback=parse_date, help="Only rows planned for this day.")
@click.option("--org", "slug", help="Only this organization.")
@click.option("--status", type=click.Choice(STATUSES), help="Only rows in this status.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of rows).")
def messages_cmd(
    on_date: date | None, slug: str | None, status: str | None, limit: int | None, as_json: bool
) -> None:
    """The ledger's rows: who, what, and what happened."""
    if slug is not None:  # a disabled organization's messages stay readable
        with engine().connect() as conn:
            org_service.get_org(conn, slug)
    rows = [
        {**r, "test": False}
        for r in runner.messages(engine(), on_date=on_date, slug=slug, status=status, limit=limit)
    ]
    # `reminders send-test` texts, after the reminders: never counted with them.
    rows += sent_test_rows(engine(), on_date=on_date, slug=slug, status=status)
    rows = rows[:limit] if limit is not None else rows
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        why = f" ({r['reason']})" if r["reason"] else ""
        ident = f"test {r['id']}" if r["test"] else str(r["id"])
        click.echo(
            f"{ident:>6} {r['org']:<12} {r['local_date']} {r['customer_id'] or '-':<10} "
            f"{r['phone'] or '-':<16} lead {r['lead_days']} left {r['days_left']} "
            f"{r['status']}{why}: {r['body'] or ''}"
        )


@click.group("number")
def number_group() -> None:
    """Numbers the provider said cannot take texts (30005, 30006, 21614)."""


@number_group.command("clear")
@click.argument("phone")
@click.option("--org", "slug", required=True, help="The organization's slug.")
def number_clear_cmd(phone: str, slug: str) -> None:
    """Text PHONE again: lift its undeliverable mark for the organization."""
    with engine().begin() as conn:
        e164, was = org_service.clear_undeliverable(conn, slug, phone)
    click.echo(f"{e164}: {'texted again' if was else 'was not marked undeliverable'} for {slug}")


COMMANDS = [run_cmd, status_cmd, messages_cmd, number_group]

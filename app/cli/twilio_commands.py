"""Twilio's side of the service: reconciliation of unknown outcomes (the webhook is the API's)."""

from __future__ import annotations

import sys
from datetime import date

import click

from app.cli.common import echo_json, engine, now, parse_date, settings
from app.logs import configure_logging
from app.providers import build_provider, check_provider_settings
from app.services.reconcile import reconcile


@click.command("reconcile")
@click.option("--since", callback=parse_date, help="Only rows planned on or after YYYY-MM-DD.")
@click.option(
    "--safe-delay",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds after an attempt before a text missing at the provider counts as not sent "
    "(default: REMINDER_RECONCILE_DELAY_SECONDS, 300).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def reconcile_cmd(since: date | None, safe_delay: float | None, as_json: bool) -> None:
    """Settle texts whose outcome is unknown by asking the provider."""
    s = settings()
    check_provider_settings(s)
    configure_logging(s, stream=sys.stderr)
    provider = build_provider(s)
    try:
        report = reconcile(
            engine(),
            provider,
            now=now(),
            stale_sending_seconds=s.stale_sending_seconds,
            since=since,
            safe_delay_seconds=s.reconcile_delay_seconds if safe_delay is None else safe_delay,
        )
    finally:
        close = getattr(provider, "close", None)
        if close is not None:
            close()
    if as_json:
        echo_json(report.as_dict())
        return
    click.echo(
        "checked {checked}: sent {sent}, back to pending {retried}, still waiting {waiting}, "
        "provider errors {errors}".format(**report.as_dict())
    )


COMMANDS = [reconcile_cmd]

"""`reminders send-test`: one real text through the configured provider, marked as a test."""

from __future__ import annotations

import sys

import click

from app.cli.common import echo_json, engine, now, plural, settings
from app.logs import configure_logging
from app.providers import build_provider, check_provider_settings
from app.services.send_test import send_test


@click.command("send-test")
@click.argument("slug")
@click.argument("phone")
@click.option("--lead", type=int, help="Render the template of this lead day (default: largest).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def send_test_cmd(slug: str, phone: str, lead: int | None, as_json: bool) -> None:
    """Send one text rendered from the organization's template with sample data.

    It goes through the configured provider (SMS_PROVIDER) and shows in `reminders messages`
    marked as a test; it is never counted as a reminder and never stands in for one.
    """
    s = settings()
    check_provider_settings(s)
    configure_logging(s, stream=sys.stderr)
    provider = build_provider(s)
    try:
        text, message_id = send_test(engine(), provider, slug, phone, lead=lead, now=now())
    finally:
        provider.close()
    if as_json:
        echo_json({"test_id": text.id, "provider_message_id": message_id, **text.__dict__})
        return
    click.echo(
        f"sent test text {text.id} to {text.phone} for {text.org} via {s.sms_provider} "
        f"(lead {text.lead_days}, template: {text.origin}, {plural(text.segments, 'segment')}, "
        f"{text.encoding}; provider id {message_id}): {text.body}"
    )


COMMANDS = [send_test_cmd]

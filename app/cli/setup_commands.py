"""Setting up: the schema, organizations, templates, customers, opt-outs, the demo."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from app.cli.common import echo_json, engine, now, plural, settings
from app.db.migrate import upgrade
from app.domain.smart_encoding import SMART_ENCODING, describe, lookalike_note, lookalikes
from app.domain.templates import Preview
from app.errors import ValidationError
from app.services import orgs as org_service
from app.services.demo import load_demo
from app.services.importer import import_csv


@click.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
def db_upgrade() -> None:
    """Apply the schema migrations (safe to run again)."""
    upgrade(settings().database_url)
    click.echo("database is up to date")


@click.group("org")
def org_group() -> None:
    """Organizations: each has its own time zone, send time, window, lead days and templates."""


def _org_options(*, new: bool) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The options `org add` and `org set` share (set: each one optional, unchanged if absent)."""
    keep = "" if new else " Unchanged when not given."
    options = [
        click.option("--name", required=new, help="Name shown in texts." + keep),
        click.option("--timezone", "tz", required=new, help="IANA zone, e.g. Europe/Paris." + keep),
        click.option("--send-time", help="Local daily send time HH:MM [REMINDER_SEND_TIME]."),
        click.option("--send-window", help="Local window HH:MM-HH:MM [REMINDER_SEND_WINDOW]."),
        click.option(
            "--lead-days", help="Comma-separated days before expiry [REMINDER_LEAD_DAYS]."
        ),
        click.option(
            "--country",
            help="Country national numbers (without +code) are read in, e.g. FR "
            "[the time zone's country, else REMINDER_DEFAULT_COUNTRY].",
        ),
        click.option("--sender", help="From number, or a Messaging Service SID (MG…)."),
        click.option(
            "--rate",
            type=float,
            help="Message segments per second for this sender (a 3-segment text takes 3) "
            "[SMS_RATE_PER_SECOND].",
        ),
    ]

    def apply(f: Callable[..., None]) -> Callable[..., None]:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


def _org_input(slug: str, tz: str | None, **given: Any) -> org_service.OrgInput:
    return org_service.OrgInput(slug=slug, timezone=tz, **given)


@org_group.command("add")
@click.argument("slug")
@_org_options(new=True)
def org_add(slug: str, tz: str, **given: Any) -> None:
    """Add an organization."""
    with engine().begin() as conn:
        org = org_service.add_org(
            conn, _org_input(slug, tz, **given), settings=settings(), now=now()
        )
    click.echo(f"added organization {org.slug} ({org.name}, {org.timezone}, country {org.country})")


@org_group.command("set")
@click.argument("slug")
@_org_options(new=False)
def org_set(slug: str, tz: str | None, **given: Any) -> None:
    """Change an organization's settings; a refused value changes nothing."""
    data = _org_input(slug, tz, **given)
    if all(v is None for v in (tz, *given.values())):
        raise click.UsageError("nothing to change: give at least one option")
    with engine().begin() as conn:
        org = org_service.update_org(conn, data, settings=settings())
    shown = org_service.org_dict(org)
    changed = [
        f"{key} {shown[key] if key != 'lead_days' else _leads(org.leads)}"
        for key, value in (("timezone", tz), *given.items())
        if value is not None
    ]
    click.echo(f"changed organization {org.slug}: " + ", ".join(changed))


def _leads(leads: tuple[int, ...]) -> str:
    return ",".join(str(x) for x in leads)


def _enable(enabled: bool) -> click.Command:
    verb = "enable" if enabled else "disable"

    @org_group.command(verb)
    @click.argument("slug")
    def command(slug: str) -> None:
        with engine().begin() as conn:
            changed = org_service.set_enabled(conn, slug, enabled=enabled, now=now())
        note = "" if changed else f" (it was already {verb}d)"
        what = (
            "it plans and sends again from its next send time"
            if enabled
            else f"it plans and sends nothing until `reminders org enable {slug}`; its customers, "
            "templates and messages stay"
        )
        click.echo(f"{verb}d organization {slug}{note}: {what}")

    command.help = (
        "Plan and send for this organization again."
        if enabled
        else "Stop planning and sending for this organization (its data stays)."
    )
    return command


_enable(False)
_enable(True)


@org_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def org_list(as_json: bool) -> None:
    """List organizations."""
    with engine().connect() as conn:
        rows = [org_service.org_dict(o) for o in org_service.list_orgs(conn)]
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        leads = ",".join(str(x) for x in r["lead_days"])  # type: ignore[attr-defined]
        off = "" if r["active"] else f" DISABLED since {r['disabled_at']}"
        click.echo(
            f"{r['slug']:<16} {r['name']:<24} {r['timezone']:<22} send {r['send_time']} "
            f"window {r['send_window']} leads {leads} country {r['country']} "
            f"sender {r['sender'] or '-'}{off}"
        )


def _show_preview(p: Preview, lead: int) -> None:
    s = p.segments
    extra = f" (UCS-2 because of {' '.join(map(repr, s.non_gsm_chars))})" if s.non_gsm_chars else ""
    click.echo(f"[lead {lead}] {p.length} chars, {s.segments} segment(s), {s.encoding}{extra}")
    click.echo(f"  {p.body}")
    note = lookalike_note(p.body)
    if note:
        click.echo(f"  note: {note}")


@click.group("template")
def template_group() -> None:
    """Message templates (Jinja2, sandboxed)."""


@template_group.command("set")
@click.argument("slug")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--lead", type=int, help="Only for this lead day (default: the organization default)."
)
@click.option(
    "--smart-encoding",
    is_flag=True,
    help="Replace look-alike characters (’ “ ” – … and others) with their GSM-7 equivalents, "
    "as Twilio's Smart Encoding does, so texts keep 160 characters a segment.",
)
def template_set(slug: str, file: Path, lead: int | None, smart_encoding: bool) -> None:
    """Check a template file and store it; a refused template changes nothing."""
    try:
        # utf-8-sig: a byte-order mark from an editor would be an invisible UCS-2 character.
        source = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"{file}: cannot read it ({exc})") from None
    replaced = lookalikes(source) if smart_encoding else ()
    with engine().begin() as conn:
        previews = org_service.set_template(
            conn,
            slug,
            source.strip(),
            lead=lead,
            settings=settings(),
            now=now(),
            smart_encoding=smart_encoding,
        )
        leads = [lead] if lead is not None else list(org_service.get_org(conn, slug).leads)
    click.echo(f"template saved for {slug}" + (f", lead day {lead}" if lead is not None else ""))
    if replaced:
        shown = ", ".join(f"{describe(ch)} → {SMART_ENCODING[ch]!r}" for ch in replaced)
        click.echo(f"smart encoding replaced {shown}")
    for p, lead_days in zip(previews, leads, strict=True):
        _show_preview(p, lead_days)


@template_group.command("remove")
@click.argument("slug")
@click.option("--lead", type=int, help="The lead day's template (default: the organization's).")
def template_remove(slug: str, lead: int | None) -> None:
    """Remove a template: its texts go back to the fallback chain (lead day, organization
    default, built-in default)."""
    with engine().begin() as conn:
        origin = org_service.remove_template(conn, slug, lead=lead)
    which = f"lead day {lead}" if lead is not None else "default"
    click.echo(f"removed the {which} template of {slug}; its texts now use: {origin}")


@template_group.command("show")
@click.argument("slug")
@click.option("--lead", type=int, help="The template used for this lead day.")
def template_show(slug: str, lead: int | None) -> None:
    """Print the template in force (and where it comes from)."""
    with engine().connect() as conn:
        source, origin = org_service.template_source(conn, slug, lead=lead)
    click.echo(f"# {origin}")
    click.echo(source)


@click.command("preview")
@click.argument("slug")
@click.option("--lead", type=int, help="Lead day to preview (default: the largest).")
def preview_cmd(slug: str, lead: int | None) -> None:
    """Render the template with sample data: text, length, segments, encoding."""
    with engine().connect() as conn:
        p, origin = org_service.preview(conn, slug, lead=lead, settings=settings())
        lead_days = lead if lead is not None else max(org_service.get_org(conn, slug).leads)
    click.echo(f"# {origin}")
    _show_preview(p, lead_days)


@click.command("import")
@click.argument("slug")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--skip-invalid", is_flag=True, help="Store the good rows and list the bad ones.")
def import_cmd(slug: str, file: Path, skip_invalid: bool) -> None:
    """Import customers and subscriptions from CSV (upserts by external ids).

    Header: customer_id,name,phone,subscription_id,plan,expires_on[,amount,currency,status]
    """

    def progress(done: int, total: int) -> None:
        if total >= 20000:
            click.echo(f"  stored {done}/{total} rows", err=True)

    with engine().begin() as conn:
        report = import_csv(conn, slug, file, skip_invalid=skip_invalid, progress=progress)
    for err in report.listed_errors():
        click.echo(f"skipped {err}", err=True)
    for err in report.listed_phone_errors():
        click.echo(f"invalid phone, stored but gets no text: {err}", err=True)
    click.echo(
        f"imported {plural(report.subscriptions, 'subscription')} for "
        f"{plural(report.customers, 'customer')} into {slug}; "
        f"{plural(report.invalid_phones, 'invalid phone number')} (they get no text)"
        + (f"; {plural(report.bad_rows, 'bad row')} skipped" if report.bad_rows else "")
    )


def _opt(opted_out: bool) -> click.Command:
    verb = "opt-out" if opted_out else "opt-in"

    @click.command(verb)
    @click.argument("slug")
    @click.argument("phone")
    def command(slug: str, phone: str) -> None:
        with engine().begin() as conn:
            e164, changed = org_service.set_opt_out(
                conn, slug, phone, opted_out=opted_out, now=now()
            )
        state = "opted out of" if opted_out else "opted in to"
        note = "" if changed else " (no change)"
        click.echo(f"{e164} {state} {slug} texts{note}")

    command.help = (
        "Stop texting this number for the organization."
        if opted_out
        else "Allow texts to this number again."
    )
    return command


@click.command("demo")
@click.option("--load-only", is_flag=True, help="Create the demo data; send nothing.")
@click.pass_context
def demo_cmd(ctx: click.Context, load_only: bool) -> None:
    """Set up the demo organization and run today's reminders on the configured provider."""
    upgrade(settings().database_url)
    with engine().begin() as conn:
        created, report = load_demo(conn, settings=settings(), now=now())
    click.echo(
        ("created" if created else "refreshed")
        + f" demo organization 'demo' with {report.subscriptions} subscriptions"
    )
    if load_only:
        return
    from app.cli.run_commands import run_cmd

    ctx.invoke(run_cmd, orgs=("demo",))


COMMANDS = [
    db_group,
    org_group,
    template_group,
    preview_cmd,
    import_cmd,
    _opt(True),
    _opt(False),
    demo_cmd,
]

"""Setting up: the schema, organizations, templates, customers, opt-outs, the demo."""

from __future__ import annotations

from pathlib import Path

import click

from app.cli.common import echo_json, engine, now, settings
from app.db.migrate import upgrade
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


@org_group.command("add")
@click.argument("slug")
@click.option("--name", required=True, help="Name shown in texts.")
@click.option("--timezone", "tz", required=True, help="IANA zone, e.g. Europe/Paris.")
@click.option("--send-time", help="Local daily send time HH:MM [REMINDER_SEND_TIME].")
@click.option("--send-window", help="Local window HH:MM-HH:MM [REMINDER_SEND_WINDOW].")
@click.option("--lead-days", help="Comma-separated days before expiry [REMINDER_LEAD_DAYS].")
@click.option("--country", help="Default country for national numbers, e.g. US.")
@click.option("--sender", help="From number, or a Messaging Service SID (MG…).")
@click.option(
    "--rate",
    type=float,
    help="Message segments per second for this sender (a 3-segment text takes 3) "
    "[SMS_RATE_PER_SECOND].",
)
def org_add(
    slug: str,
    name: str,
    tz: str,
    send_time: str | None,
    send_window: str | None,
    lead_days: str | None,
    country: str | None,
    sender: str | None,
    rate: float | None,
) -> None:
    """Add an organization."""
    data = org_service.OrgInput(
        slug=slug,
        name=name,
        timezone=tz,
        send_time=send_time,
        send_window=send_window,
        lead_days=lead_days,
        country=country,
        sender=sender,
        rate=rate,
    )
    with engine().begin() as conn:
        org = org_service.add_org(conn, data, settings=settings(), now=now())
    click.echo(f"added organization {org.slug} ({org.name}, {org.timezone})")


@org_group.command("update")
@click.argument("slug")
@click.option("--name", help="Name shown in texts.")
@click.option("--send-time", help="Local daily send time HH:MM.")
@click.option("--send-window", help="Local window HH:MM-HH:MM.")
@click.option("--lead-days", help="Comma-separated days before expiry.")
@click.option("--country", help="Default country for national numbers, e.g. US.")
@click.option("--sender", help="From number, or a Messaging Service SID (MG…); '' for the default.")
@click.option("--rate", type=float, help="Message segments per second for this sender.")
def org_update(slug: str, **options: object) -> None:
    """Change an organization's settings (checked as `org add` checks them; the API's PATCH)."""
    changes = {k: v for k, v in options.items() if v is not None}
    if not changes:
        raise ValidationError("nothing to change; see `reminders org update --help`")
    with engine().begin() as conn:
        org = org_service.update_org(conn, slug, changes, settings=settings(), now=now())
    click.echo(f"updated organization {org.slug}: " + ", ".join(sorted(changes)))


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
        click.echo(
            f"{r['slug']:<16} {r['name']:<24} {r['timezone']:<22} send {r['send_time']} "
            f"window {r['send_window']} leads {leads} sender {r['sender'] or '-'}"
        )


def _show_preview(p: Preview, lead: int) -> None:
    s = p.segments
    extra = f" (UCS-2 because of {' '.join(map(repr, s.non_gsm_chars))})" if s.non_gsm_chars else ""
    click.echo(f"[lead {lead}] {p.length} chars, {s.segments} segment(s), {s.encoding}{extra}")
    click.echo(f"  {p.body}")


@click.group("template")
def template_group() -> None:
    """Message templates (Jinja2, sandboxed)."""


@template_group.command("set")
@click.argument("slug")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--lead", type=int, help="Only for this lead day (default: the organization default)."
)
def template_set(slug: str, file: Path, lead: int | None) -> None:
    """Check a template file and store it; a refused template changes nothing."""
    try:
        source = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"{file}: cannot read it ({exc})") from None
    with engine().begin() as conn:
        previews = org_service.set_template(
            conn, slug, source.strip(), lead=lead, settings=settings(), now=now()
        )
        leads = [lead] if lead is not None else list(org_service.get_org(conn, slug).leads)
    click.echo(f"template saved for {slug}" + (f", lead day {lead}" if lead is not None else ""))
    for p, lead_days in zip(previews, leads, strict=True):
        _show_preview(p, lead_days)


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
        p, origin = org_service.preview(conn, slug, lead=lead)
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
    for err in report.errors:
        click.echo(f"skipped {err}", err=True)
    click.echo(
        f"imported {report.subscriptions} subscriptions for {report.customers} customers into "
        f"{slug}; {report.invalid_phones} invalid phone numbers (they get no text)"
        + (f"; {len(report.errors)} bad rows skipped" if report.errors else "")
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

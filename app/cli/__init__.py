"""The ``reminders`` command line: thin wrappers that call the services.

Every failure the user can fix prints one line, ``error: …``, and exits non-zero.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click
from sqlalchemy.exc import DBAPIError

from app.errors import ReminderError
from app.settings import get_settings

PROG = "reminders"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="reminders", prog_name=PROG, message="%(prog)s %(version)s")
def cli() -> None:
    """Scheduled SMS reminders for expiring subscriptions."""


def _register() -> None:
    from app.cli import (
        api_commands,
        event_commands,
        run_commands,
        send_test_commands,
        setup_commands,
    )

    for module in (setup_commands, run_commands, send_test_commands, api_commands, event_commands):
        for command in module.COMMANDS:
            cli.add_command(command)
    try:
        from app.cli import twilio_commands
    except ImportError:  # pragma: no cover - only while that module is being built
        return
    for command in twilio_commands.COMMANDS:
        cli.add_command(command)


_register()


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: one-line errors, meaningful exit codes."""
    args = list(argv) if argv is not None else sys.argv[1:]
    # Help and the version need no settings: they answer even when a setting is wrong.
    asks_help = not args or any(a in ("-h", "--help", "--version") for a in args)
    try:
        if not asks_help:
            get_settings()  # a bad setting stops every command with the variable's name
        code = cli.main(args=args, prog_name=PROG, standalone_mode=False)
        if isinstance(code, int) and code:
            return code  # a command's documented status (`reminders run`: 3 = some failed)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return exc.exit_code
    except ReminderError as exc:
        for detail in exc.details:
            click.echo(f"  {detail}", err=True)
        click.echo(f"error: {exc}", err=True)
        return 1
    except DBAPIError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        click.echo(
            f"error: database: {first} (is DATABASE_URL right, and `reminders db upgrade` run?)",
            err=True,
        )
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

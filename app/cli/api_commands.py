"""The HTTP API: ``reminders serve``, and its keys (``reminders api-key …``)."""

from __future__ import annotations

import sys

import click

from app.cli.common import echo_json, engine, now, settings
from app.logs import configure_logging
from app.services import api_keys

_HOST = click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
_PORT = click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)


def _serve(host: str, port: int, workers: int) -> None:
    from app.api.app import create_app
    from app.api.serve import serve

    s = settings()
    create_app(s)  # one line naming what is missing, before binding the port
    configure_logging(s, stream=sys.stderr)
    serve(s, host=host, port=port, workers=workers)


@click.command("serve")
@_HOST
@_PORT
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True)
def serve_cmd(host: str, port: int, workers: int) -> None:
    """Serve the HTTP API, Twilio's callbacks and /healthz (uvicorn)."""
    _serve(host, port, workers)


@click.command("webhook")
@_HOST
@_PORT
def webhook_cmd(host: str, port: int) -> None:
    """Serve Twilio's status callbacks and incoming texts (the same server as `serve`)."""
    _serve(host, port, 1)


@click.group("api-key")
def api_key_group() -> None:
    """Keys for the HTTP API (shown once; only a hash is stored)."""


@api_key_group.command("create")
@click.argument("slug", required=False)
@click.option("--admin", is_flag=True, help="A key that manages organizations and keys.")
@click.option("--name", default="", help="What the key is for, shown in `api-key list`.")
def api_key_create(slug: str | None, admin: bool, name: str) -> None:
    """Make a key for an organization (or --admin) and print it, once."""
    with engine().begin() as conn:
        key_id, key = api_keys.create_key(conn, slug=slug, admin=admin, name=name, now=now())
    click.echo(key)
    scope = "admin" if admin else f"organization {slug}"
    click.echo(f"created API key {key_id} ({scope}); it is shown only now", err=True)


@api_key_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def api_key_list(as_json: bool) -> None:
    """The keys: id, scope, name, prefix, when made and revoked (never the key)."""
    with engine().connect() as conn:
        rows = api_keys.list_keys(conn)
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        scope = "admin" if r["admin"] else r["organization"]
        state = f"revoked {r['revoked_at']}" if r["revoked_at"] else "active"
        click.echo(f"{r['id']:>4} {scope!s:<16} {r['prefix']}… {state:<10} {r['name']}")


@api_key_group.command("revoke")
@click.argument("key_id", metavar="ID", type=int)
def api_key_revoke(key_id: int) -> None:
    """Revoke a key: every request with it is refused (401) from now on."""
    with engine().begin() as conn:
        changed = api_keys.revoke_key(conn, key_id, now=now())
    click.echo(f"revoked API key {key_id}" + ("" if changed else " (it already was)"))


COMMANDS = [serve_cmd, webhook_cmd, api_key_group]

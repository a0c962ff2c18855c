"""``reminders serve`` (and ``reminders webhook``): the app on uvicorn, with bounded clients.

The socket is bound here, before uvicorn starts, so a taken port or an address that is not on
this machine is one ``error:`` line instead of uvicorn's log and traceback.
"""

from __future__ import annotations

import logging
import socket

import uvicorn
from uvicorn.supervisors import Multiprocess

from app.errors import ReminderError
from app.settings import Settings
from app.webhook.signatures import missing_webhook_settings

log = logging.getLogger("app.api")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and without it an answer's body waits for the ACK of its headers (~40 ms per request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        sock.close()
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ReminderError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def config(settings: Settings, *, host: str, port: int, workers: int) -> uvicorn.Config:
    return uvicorn.Config(
        "app.api.app:create_served_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http="app.api.protocol:H11WithDeadline",
        loop="asyncio",
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        # Idle keep-alive connections are closed; past this many connections new ones get 503.
        timeout_keep_alive=int(max(1, settings.api_keep_alive_seconds)),
        limit_concurrency=settings.api_limit_concurrency,
        timeout_graceful_shutdown=10,
    )


def serve(settings: Settings, *, host: str, port: int, workers: int = 1) -> None:
    """Serve until interrupted."""
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    missing = missing_webhook_settings(settings)
    if missing:
        log.warning(
            "no %s: every Twilio callback is refused (403) until it is set", " and ".join(missing)
        )
    log.info("API listening on http://%s:%d with %d worker(s)", host, bound, workers)
    cfg = config(settings, host=host, port=bound, workers=workers)
    if workers > 1:
        Multiprocess(cfg, sockets=[sock]).run()
    else:
        uvicorn.Server(cfg).run(sockets=[sock])

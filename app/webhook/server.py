"""``reminders webhook``: the small HTTP service Twilio calls back.

Standard library only (a threaded ``wsgiref`` server): three routes do not need a framework.
Every POST must carry a valid ``X-Twilio-Signature`` computed with the auth token over
``WEBHOOK_BASE_URL`` + the request path and the form fields, or it gets 403 and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from sqlalchemy import Engine
from twilio.request_validator import RequestValidator

from app.domain.planning import utcnow
from app.errors import ConfigError
from app.providers.twilio import INBOUND_PATH, STATUS_CALLBACK_PATH
from app.settings import Settings
from app.webhook import receipts

log = logging.getLogger("app.webhook")

MAX_BODY_BYTES = 64 * 1024
EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
Environ = dict[str, Any]


class _Form(dict[str, list[str]]):
    """Form fields with every value, in the shape RequestValidator reads (``getlist``)."""

    def getlist(self, name: str) -> list[str]:
        return self[name]

    def one(self, name: str) -> str | None:
        values = self.get(name)
        return values[-1] if values else None


def missing_webhook_settings(settings: Settings) -> list[str]:
    return [
        name
        for name, value in (
            ("TWILIO_AUTH_TOKEN", settings.twilio_auth_token),
            ("WEBHOOK_BASE_URL", settings.webhook_base_url),
        )
        if not value
    ]


def check_webhook_settings(settings: Settings) -> None:
    """With Twilio, no token or public URL means no signature can be checked: refuse to start.

    With the console provider nothing calls back, so the webhook starts closed: ``/healthz``
    answers and every callback is refused with 403.
    """
    missing = missing_webhook_settings(settings)
    if missing and settings.sms_provider == "twilio":
        raise ConfigError(
            f"the webhook needs {' and '.join(missing)} to verify Twilio's signatures"
        )


class WebhookApp:
    """The WSGI application. ``clock`` is injectable so tests can freeze time."""

    def __init__(
        self, settings: Settings, engine: Engine, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        check_webhook_settings(settings)
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.base_url = (settings.webhook_base_url or "").rstrip("/")
        token = settings.twilio_auth_token
        # No token or public URL (console provider only): no signature can be valid.
        self.validator = RequestValidator(token) if token and settings.webhook_base_url else None

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        if path == "/healthz" and method in ("GET", "HEAD"):
            return _reply(start_response, "200 OK", b"ok")
        if path not in (STATUS_CALLBACK_PATH, INBOUND_PATH):
            return _reply(start_response, "404 Not Found", b"not found")
        if method != "POST":
            return _reply(
                start_response, "405 Method Not Allowed", b"POST only", [("Allow", "POST")]
            )
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            return _reply(start_response, "413 Content Too Large", b"body too large")
        raw = environ["wsgi.input"].read(length).decode("utf-8", errors="replace")
        form = _Form(parse_qs(raw, keep_blank_values=True))
        if not self._signed(environ, path, form):
            log.warning("rejected %s with a missing or wrong X-Twilio-Signature", path)
            return _reply(start_response, "403 Forbidden", b"invalid signature")
        if path == STATUS_CALLBACK_PATH:
            return self._status(form, start_response)
        return self._inbound(form, start_response)

    def _signed(self, environ: Environ, path: str, form: _Form) -> bool:
        signature = environ.get("HTTP_X_TWILIO_SIGNATURE", "")
        if not signature or self.validator is None:
            return False
        query = environ.get("QUERY_STRING", "")
        url = self.base_url + path + (f"?{query}" if query else "")
        return bool(self.validator.validate(url, form, signature))

    def _status(self, form: _Form, start_response: StartResponse) -> Iterable[bytes]:
        sid = form.one("MessageSid") or form.one("SmsSid")
        status = form.one("MessageStatus") or form.one("SmsStatus")
        if not sid or not status:
            return _reply(start_response, "400 Bad Request", b"MessageSid and MessageStatus needed")
        receipts.record_delivery(
            self.engine,
            message_sid=sid,
            status=status.lower(),
            error_code=form.one("ErrorCode") or None,
            now=self.clock(),
        )
        return _reply(start_response, "204 No Content", b"")

    def _inbound(self, form: _Form, start_response: StartResponse) -> Iterable[bytes]:
        from_number, to_number = form.one("From"), form.one("To")
        if not from_number or not to_number:
            return _reply(start_response, "400 Bad Request", b"From and To needed")
        receipts.handle_inbound(
            self.engine,
            self.settings,
            from_number=from_number,
            to_number=to_number,
            messaging_service_sid=form.one("MessagingServiceSid"),
            body=form.one("Body") or "",
            now=self.clock(),
        )
        # Empty TwiML: no reply from us; Twilio's own opt-out handling sends the confirmation.
        return _reply(start_response, "200 OK", EMPTY_TWIML, content_type="text/xml")


def _reply(
    start_response: StartResponse,
    status: str,
    body: bytes,
    extra: list[tuple[str, str]] | None = None,
    *,
    content_type: str = "text/plain; charset=utf-8",
) -> list[bytes]:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    start_response(status, headers + (extra or []))
    return [body]


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """Access lines through logging (not bare stderr), without query strings."""

    # Headers and body are separate writes: without TCP_NODELAY each answer can stall ~40 ms.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def make_webhook_server(
    host: str, port: int, *, settings: Settings, engine: Engine
) -> _ThreadingWSGIServer:
    app = WebhookApp(settings, engine)
    server = make_server(
        host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
    assert isinstance(server, _ThreadingWSGIServer)
    return server


def serve(host: str = "127.0.0.1", port: int = 8080, *, settings: Settings | None = None) -> None:
    """Serve until interrupted (the CLI's ``reminders webhook``)."""
    from app.db.session import get_engine
    from app.settings import get_settings

    settings = settings or get_settings()
    server = make_webhook_server(
        host, port, settings=settings, engine=get_engine(settings.database_url)
    )
    missing = missing_webhook_settings(settings)
    if missing:
        log.warning(
            "no %s: every Twilio callback is refused (403) until it is set",
            " and ".join(missing),
        )
    log.info(
        "webhook listening on http://%s:%d (Twilio posts to %s%s and %s%s)",
        host,
        server.server_port,
        settings.webhook_base_url,
        STATUS_CALLBACK_PATH,
        settings.webhook_base_url,
        INBOUND_PATH,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()

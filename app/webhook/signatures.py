"""Twilio's ``X-Twilio-Signature``: what the webhook needs to check it, and the check.

Every callback must carry a valid signature computed with the auth token over
``WEBHOOK_BASE_URL`` + the request path (and query) and the form fields, or it changes nothing.
A callback with a JSON body is signed Twilio's other way: its URL carries
``bodySHA256=<hex SHA-256 of the body>`` and the signature covers that full URL and no fields;
both the hash and the signature must hold.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from twilio.request_validator import RequestValidator

from app.errors import ConfigError
from app.settings import Settings


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


class Form(dict[str, list[str]]):
    """Form fields with every value, in the shape RequestValidator reads (``getlist``)."""

    def getlist(self, name: str) -> list[str]:
        return self[name]

    def one(self, name: str) -> str | None:
        values = self.get(name)
        return values[-1] if values else None


class Signatures:
    def __init__(self, settings: Settings) -> None:
        self.base_url = (settings.webhook_base_url or "").rstrip("/")
        token = settings.twilio_auth_token
        # No token or public URL (console provider only): no signature can be valid.
        self.validator = RequestValidator(token) if token and settings.webhook_base_url else None

    def valid(self, *, path: str, query: str, form: Form, signature: str) -> bool:
        if not signature or self.validator is None:
            return False
        url = self.base_url + path + (f"?{query}" if query else "")
        return bool(self.validator.validate(url, form, signature))

    def valid_body(self, *, path: str, query: str, body: bytes, signature: str) -> bool:
        """A JSON callback: ``bodySHA256`` in the query matches the body, and the signature
        the URL with it. Without ``bodySHA256`` nothing vouches for the body: refused."""
        if not signature or self.validator is None:
            return False
        if len(parse_qs(query).get("bodySHA256", [])) != 1:
            return False
        try:
            text = body.decode("utf-8")  # the hash is over these very bytes
        except UnicodeDecodeError:
            return False
        url = self.base_url + path + f"?{query}"
        return bool(self.validator.validate(url, text, signature))

"""Twilio's Messages API through the ``twilio`` helper library.

Every failure is sorted into one of the three provider errors, because the bucket decides what
the ledger does: transient is retried, permanent is failed for good, and unknown (the request may
have reached Twilio) is never resent blindly but settled by reconciliation, which asks Twilio.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

import requests
from requests.adapters import HTTPAdapter
from requests.auth import _basic_auth_str
from requests.models import PreparedRequest
from requests.structures import CaseInsensitiveDict
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProxyError,
    SSLError,
)

from app.errors import ConfigError
from app.providers.base import (
    PermanentError,
    ProviderError,
    SentMessage,
    TransientError,
    UnknownOutcomeError,
)
from app.settings import Settings

log = logging.getLogger("app.sms.twilio")

STATUS_CALLBACK_PATH = "/twilio/status"
INBOUND_PATH = "/twilio/inbound"

#: Twilio error codes that mean "this recipient will never get this text": fail, don't retry.
PERMANENT_CODES = {
    "21211": "invalid 'To' number",
    "21408": "region not enabled for this account",
    "21610": "recipient unsubscribed (replied STOP)",
    "21612": "recipient unreachable from this sender",
    "21614": "'To' is not a mobile number",
}
OPTED_OUT_CODE = "21610"
RATE_LIMITED_CODE = "20429"

# Reasons urllib3 gives when the connection never carried the request: safe to retry.
_NOT_SENT_REASONS = (
    ConnectTimeoutError,
    NewConnectionError,
    NameResolutionError,
    SSLError,
    ProxyError,
)
# Twilio's answer to "list messages to this number", newest first; a customer gets a handful.
_RECONCILE_SCAN_LIMIT = 200
# Twilio's clock and ours may disagree a little; a message created just before ``since`` counts.
_CLOCK_SKEW = timedelta(seconds=60)


def check_settings(settings: Settings) -> None:
    """Refuse to start with ``SMS_PROVIDER=twilio`` unless credentials and a sender are set."""
    missing = []
    if not settings.twilio_account_sid:
        missing.append("TWILIO_ACCOUNT_SID")
    if not settings.twilio_auth_token:
        missing.append("TWILIO_AUTH_TOKEN")
    if not settings.twilio_from_number and not settings.twilio_messaging_service_sid:
        missing.append("TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID")
    if missing:
        raise ConfigError(f"SMS_PROVIDER=twilio needs {', '.join(missing)}: set them and restart")


def sender_fields(sender: str | None, settings: Settings) -> dict[str, str]:
    """The organization's sender, else the Messaging Service, else the From number.

    A value starting with ``MG`` is a Messaging Service SID; anything else is a phone number or
    alphanumeric sender ID.
    """
    chosen = sender or settings.twilio_messaging_service_sid or settings.twilio_from_number
    if not chosen:
        raise ConfigError(
            "no Twilio sender: set TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID"
        )
    if chosen.startswith("MG"):
        return {"messaging_service_sid": chosen}
    return {"from_": chosen}


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


_FORM = "application/x-www-form-urlencoded"


def _form_body(data: dict[str, object]) -> str:
    """The form body exactly as requests encodes a dict: lists repeat the key, None is left out."""
    pairs: list[tuple[str, object]] = []
    for key, value in data.items():
        if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
            if value is not None:
                pairs.append((key, value))
        else:
            pairs.extend((key, v) for v in value if v is not None)
    return urlencode(pairs)


class _HttpClient(TwilioHttpClient):  # type: ignore[misc]  # the library ships no types
    """The library's requests-based client with a pool sized for many sends in flight.

    ``Retry-After`` is not kept on the library's exceptions, so it is stored per thread: each
    send runs the whole request on its own thread, so the value read afterwards is that request's.

    A form POST (every send) skips requests' ``Session`` layer, which merged cookies, hooks and
    settings on every call and cost about a third of a send's CPU: the request is prepared here
    and handed to the same transport adapter, so timeouts, the connection pool and every
    exception raised are requests' own, exactly as before.
    """

    def __init__(
        self, *, connect_timeout: float, read_timeout: float, pool_size: int, logger: logging.Logger
    ) -> None:
        self._local = threading.local()
        super().__init__(
            pool_connections=True,
            request_hooks={"response": [self._remember_response]},
            logger=logger,
        )
        # requests takes (connect, read); the base class only type-checks a single float.
        self.timeout = (connect_timeout, read_timeout)  # type: ignore[assignment]
        assert self.session is not None
        # No proxy or CA settings from the environment: the settings object is the only source
        # of configuration, and scanning os.environ on every request costs ~15% of a send's CPU.
        self.session.trust_env = False
        self._adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
        for scheme in ("https://", "http://"):
            self.session.mount(scheme, self._adapter)
        self._auth_header: tuple[tuple[str, str], str] | None = None

    def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        form = headers is not None and headers.get("Content-Type") == _FORM
        if params or not form or not isinstance(auth, tuple) or method.upper() != "POST":
            return super().request(  # lists (reconciliation) take the library's full path
                method, url, params, data, headers, auth, timeout, allow_redirects
            )
        assert headers is not None
        prepared = PreparedRequest()
        prepared.method = "POST"
        prepared.url = url
        prepared.headers = CaseInsensitiveDict(headers)
        prepared.body = _form_body(data or {})
        prepared.headers["Content-Length"] = str(len(prepared.body))
        prepared.headers["Authorization"] = self._basic_auth(auth)
        response = self._adapter.send(
            prepared, timeout=self.timeout if timeout is None else timeout, proxies={}
        )
        self._local.retry_after = response.headers.get("Retry-After")
        return Response(int(response.status_code), response.text, response.headers)

    def _basic_auth(self, auth: tuple[str, str]) -> str:
        cached = self._auth_header
        if cached is None or cached[0] != auth:
            cached = (auth, _basic_auth_str(*auth))
            self._auth_header = cached
        return cached[1]

    def _remember_response(self, response: requests.Response, *_: Any, **__: Any) -> None:
        self._local.retry_after = response.headers.get("Retry-After")

    def forget_response(self) -> None:
        self._local.retry_after = None

    @property
    def last_retry_after(self) -> str | None:
        value: str | None = getattr(self._local, "retry_after", None)
        return value

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


class TwilioProvider:
    """One instance per process (after fork); thread-safe, one connection pool for all sends."""

    name = "twilio"
    can_reconcile = True

    def __init__(self, settings: Settings, *, pool_size: int | None = None) -> None:
        check_settings(settings)
        assert settings.twilio_account_sid and settings.twilio_auth_token
        self._settings = settings
        self._token = settings.twilio_auth_token
        http_logger = logging.getLogger("app.sms.twilio.http")
        # The library logs every request line (with phone numbers) at INFO: too much at 1,000/s.
        http_logger.setLevel(logging.WARNING)
        self._http = _HttpClient(
            connect_timeout=min(5.0, settings.twilio_timeout_seconds),
            read_timeout=settings.twilio_timeout_seconds,
            pool_size=pool_size or max(settings.send_concurrency + 8, 10),
            logger=http_logger,
        )
        self._client = Client(
            settings.twilio_account_sid,
            settings.twilio_auth_token,
            http_client=self._http,
            # A non-empty mapping so the library reads nothing (TWILIO_EDGE, ...) from os.environ:
            # the settings object is the only source of configuration.
            environment={"SMS_PROVIDER": "twilio"},
        )
        self._client.api.base_url = settings.twilio_api_base_url.rstrip("/")
        self._messages = self._client.api.v2010.account.messages
        # Sends go one level below ``messages.create``: the same request and the same
        # TwilioRestException on an error answer, without building a MessageInstance (dates,
        # prices, subresources) of which only the SID is read.
        self._version = self._messages._version
        self._create_uri = self._messages._uri
        self._status_callback = (
            settings.webhook_base_url.rstrip("/") + STATUS_CALLBACK_PATH
            if settings.webhook_base_url
            else None
        )

    def close(self) -> None:
        self._http.close()

    def send(self, to: str, body: str, sender: str | None) -> str:
        fields = sender_fields(sender, self._settings)
        data: dict[str, object] = {"To": to}
        if self._status_callback:
            data["StatusCallback"] = self._status_callback
        if "from_" in fields:
            data["From"] = fields["from_"]
        else:
            data["MessagingServiceSid"] = fields["messaging_service_sid"]
        data["Body"] = body
        self._http.forget_response()
        try:
            payload = self._version.create(
                method="POST",
                uri=self._create_uri,
                data=data,
                headers={"Content-Type": _FORM, "Accept": "application/json"},
            )
        except (TwilioException, requests.RequestException, ValueError) as exc:
            raise self._classify(exc) from None
        sid = payload.get("sid") if isinstance(payload, dict) else None
        if not sid:
            raise UnknownOutcomeError("Twilio accepted the request but returned no message SID")
        return str(sid)

    def find_sent(
        self, *, to: str, body: str, sender: str | None, since: datetime
    ) -> SentMessage | None:
        """The newest outbound message to ``to`` with ``body`` created at or after ``since``.

        Filters by ``To`` (and ``From`` for a number sender) but not by ``DateSent``: a message
        still queued has no sent date yet and would be missed; ``date_created`` is compared here.
        """
        query: dict[str, Any] = {"to": to, "page_size": 50, "limit": _RECONCILE_SCAN_LIMIT}
        fields = sender_fields(sender, self._settings)
        if "from_" in fields:
            query["from_"] = fields["from_"]
        earliest = since - _CLOCK_SKEW
        self._http.forget_response()
        try:
            for message in self._messages.stream(**query):
                created = message.date_created
                if message.body != body or not (message.direction or "").startswith("outbound"):
                    continue
                if created is not None and created < earliest:
                    continue
                return SentMessage(
                    message_id=str(message.sid),
                    to=str(message.to),
                    body=str(message.body),
                    created_at=created,
                    status=str(message.status) if message.status else None,
                )
        except (TwilioException, requests.RequestException, ValueError) as exc:
            error = self._classify(exc)
            # A lookup changes nothing at Twilio: whatever went wrong, asking again is safe.
            raise TransientError(error.message, code=error.code) from None
        return None

    def _classify(self, exc: Exception) -> ProviderError:
        retry_after = parse_retry_after(self._http.last_retry_after)
        error = classify_error(exc, retry_after=retry_after)
        # Belt and braces: no message built from a response or exception may carry the token.
        error.message = error.message.replace(self._token, "(hidden)")
        error.args = (error.message,)
        return error


def classify_error(exc: BaseException, *, retry_after: float | None = None) -> ProviderError:
    """Sort a library or connection exception into transient, permanent or unknown."""
    if isinstance(exc, TwilioRestException | TwilioServiceException):
        status = int(exc.status)
        # Without a JSON error body the library puts the HTTP status where the code goes.
        code = str(exc.code) if exc.code is not None and exc.code != status else None
        detail = exc.msg if isinstance(exc, TwilioRestException) else (exc.detail or exc.title)
        text = f"Twilio HTTP {status}" + (f" error {code}" if code else "") + f": {detail}"
        if status == 429 or code == RATE_LIMITED_CODE:
            return TransientError(text, code=code or "429", retry_after=retry_after)
        if status >= 500:
            return TransientError(text, code=code or str(status), retry_after=retry_after)
        if 400 <= status < 500:
            return PermanentError(text, code=code or str(status), opted_out=code == OPTED_OUT_CODE)
        return UnknownOutcomeError(text, code=code or str(status))
    if isinstance(exc, requests.ConnectTimeout):
        return TransientError("Twilio connect timeout: request not sent", retry_after=retry_after)
    if isinstance(exc, requests.ReadTimeout):
        return UnknownOutcomeError("Twilio read timeout: the text may have been accepted")
    if isinstance(exc, requests.ConnectionError):
        reason = exc.args[0].reason if exc.args and isinstance(exc.args[0], MaxRetryError) else None
        if isinstance(reason, _NOT_SENT_REASONS):
            return TransientError(
                f"cannot connect to Twilio ({type(reason).__name__}): request not sent",
                retry_after=retry_after,
            )
        return UnknownOutcomeError(
            "connection to Twilio broke after the request was sent: the text may have been accepted"
        )
    return UnknownOutcomeError(f"unexpected answer from Twilio ({type(exc).__name__})")

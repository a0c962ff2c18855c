"""Twilio's Messages API through the ``twilio`` helper library.

Every failure is sorted into one of the three provider errors, because the bucket decides what
the ledger does: transient is retried, permanent is failed for good, and unknown (the request may
have reached Twilio) is never resent blindly but settled by reconciliation, which asks Twilio.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import requests
from requests.adapters import HTTPAdapter
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProxyError,
    SSLError,
)

from app.aioloop import shared_loop
from app.errors import ConfigError
from app.providers import twilio_async
from app.providers.base import (
    PermanentError,
    ProviderError,
    SentMessage,
    TransientError,
    UnknownOutcomeError,
)
from app.providers.twilio_async import AsyncHttpClient, last_retry_after
from app.settings import Settings

# Twilio's longest validity period (its default): a text older than this is never delivered.
MAX_VALIDITY_SECONDS = 36_000
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
NOT_MOBILE_CODE = "21614"
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


class _HttpClient(TwilioHttpClient):  # type: ignore[misc]  # the library ships no types
    """The library's requests-based client, for reconciliation's lookups (sends go async).

    Explicit (connect, read) timeouts, a pool for the lookups in flight, and nothing read from
    the environment: the settings object is the only source of configuration.
    """

    def __init__(
        self, *, connect_timeout: float, read_timeout: float, pool_size: int, logger: logging.Logger
    ) -> None:
        super().__init__(pool_connections=True, logger=logger)
        # requests takes (connect, read); the base class only type-checks a single float.
        self.timeout = (connect_timeout, read_timeout)  # type: ignore[assignment]
        assert self.session is not None
        self.session.trust_env = False
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
        for scheme in ("https://", "http://"):
            self.session.mount(scheme, adapter)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


class TwilioProvider:
    """One instance per process (after fork); thread-safe.

    Sends go through the library's async path on the process's shared event loop: the engine
    awaits ``send_async`` there, and ``send`` (any other thread) hands the same coroutine to it.
    Reconciliation's lookups use the requests-based client, whose pages the library only
    iterates synchronously.
    """

    name = "twilio"
    can_reconcile = True
    paced = True  # Twilio's senders take so many segments per second

    def __init__(self, settings: Settings, *, pool_size: int | None = None) -> None:
        check_settings(settings)
        assert settings.twilio_account_sid and settings.twilio_auth_token
        self.account = settings.twilio_account_sid
        self._settings = settings
        self._token = settings.twilio_auth_token
        http_logger = logging.getLogger("app.sms.twilio.http")
        # The library logs every request line (with phone numbers) at INFO: too much at 1,000/s.
        http_logger.setLevel(logging.WARNING)
        connect_timeout = min(5.0, settings.twilio_timeout_seconds)
        read_timeout = settings.twilio_timeout_seconds
        base_url = settings.twilio_api_base_url.rstrip("/")
        self._http = _HttpClient(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            pool_size=pool_size or max(settings.send_concurrency + 8, 10),
            logger=http_logger,
        )
        self._messages = self._client(settings, self._http, base_url).api.v2010.account.messages
        self._loop = shared_loop()
        self._async_http = AsyncHttpClient(
            connect_timeout=connect_timeout, read_timeout=read_timeout, logger=http_logger
        )
        async_messages = self._client(settings, self._async_http, base_url).api.v2010.account
        # Sends go one level below ``messages.create_async``: the same request and the same
        # TwilioRestException on an error answer, without building a MessageInstance (dates,
        # prices, subresources) of which only the SID is read.
        self._version = async_messages.messages._version
        self._create_uri = async_messages.messages._uri
        # A last resort if the loop itself stalls: the HTTP timeouts normally end a send first.
        # Inside REMINDER_STALE_SENDING_SECONDS by the settings' own check (a claimed row's
        # request must end before the sweeper may take it for dead).
        self._deadline = settings.twilio_send_deadline
        self._status_callback = (
            settings.webhook_base_url.rstrip("/") + STATUS_CALLBACK_PATH
            if settings.webhook_base_url
            else None
        )

    @staticmethod
    def _client(settings: Settings, http_client: Any, base_url: str) -> Client:
        client = Client(
            settings.twilio_account_sid,
            settings.twilio_auth_token,
            http_client=http_client,
            # A non-empty mapping so the library reads nothing (TWILIO_EDGE, ...) from os.environ:
            # the settings object is the only source of configuration.
            environment={"SMS_PROVIDER": "twilio"},
        )
        client.api.base_url = base_url
        return client

    def close(self) -> None:
        self._http.close()
        if self._loop.started:
            # The loop is shared: close this client's session on it and leave it running.
            self._loop.submit(self._async_http.close()).result(timeout=5)

    def send(self, to: str, body: str, sender: str | None, *, valid_for: int | None = None) -> str:
        future = self._loop.submit(self.send_async(to, body, sender, valid_for=valid_for))
        try:
            return future.result(timeout=self._deadline + 1.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise UnknownOutcomeError(
                "no answer from the Twilio send loop in time: the text may have been accepted"
            ) from None

    async def send_async(
        self,
        to: str,
        body: str,
        sender: str | None,
        *,
        valid_for: int | None = None,
        send_by: float | None = None,
    ) -> str:
        """``send``, awaited on the shared loop (the engine's path: no thread per send).

        Twilio queues texts above a sender's rate for up to 10 hours and then delivers them,
        window or not: ``ValidityPeriod`` makes it drop one the window would refuse (it then
        reports error 30036, and the text waits for the next opening in the ledger)."""
        fields = sender_fields(sender, self._settings)
        data: dict[str, object] = {"To": to}
        if self._status_callback:
            data["StatusCallback"] = self._status_callback
        if "from_" in fields:
            data["From"] = fields["from_"]
        else:
            data["MessagingServiceSid"] = fields["messaging_service_sid"]
        data["Body"] = body
        if valid_for is not None:
            data["ValidityPeriod"] = max(1, min(MAX_VALIDITY_SECONDS, valid_for))
        # Each send is a task of its own (its own context): the value is this request's.
        twilio_async.send_by.set(send_by)
        try:
            async with asyncio.timeout(self._deadline):
                return await self._create(data)
        except TimeoutError:
            # Only the last-resort deadline lands here: _create sorts the HTTP timeouts itself.
            raise UnknownOutcomeError(
                "no answer from Twilio within the send deadline: the text may have been accepted"
            ) from None

    async def _create(self, data: dict[str, object]) -> str:
        try:
            payload = await self._version.create_async(
                method="POST",
                uri=self._create_uri,
                data=data,
                headers={"Content-Type": _FORM, "Accept": "application/json"},
            )
        except (TwilioException, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise self._classify(exc, last_retry_after()) from None
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
            error = self._classify(exc, None)
            # A lookup changes nothing at Twilio: whatever went wrong, asking again is safe.
            raise TransientError(error.message, code=error.code) from None
        return None

    def _classify(self, exc: Exception, retry_after: str | None) -> ProviderError:
        error = classify_error(exc, retry_after=parse_retry_after(retry_after))
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
            return PermanentError(
                text,
                code=code or str(status),
                opted_out=code == OPTED_OUT_CODE,
                undeliverable=code == NOT_MOBILE_CODE,
            )
        return UnknownOutcomeError(text, code=code or str(status))
    if isinstance(exc, requests.ConnectTimeout | aiohttp.ConnectionTimeoutError):
        return TransientError("Twilio connect timeout: request not sent", retry_after=retry_after)
    if isinstance(exc, requests.ReadTimeout | TimeoutError):
        return UnknownOutcomeError("Twilio read timeout: the text may have been accepted")
    not_sent: BaseException | None = None
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, DNS, TLS handshake, proxy
        not_sent = exc
    elif isinstance(exc, requests.ConnectionError):
        reason = exc.args[0].reason if exc.args and isinstance(exc.args[0], MaxRetryError) else None
        not_sent = reason if isinstance(reason, _NOT_SENT_REASONS) else None
    if not_sent is not None:
        return TransientError(
            f"cannot connect to Twilio ({type(not_sent).__name__}): request not sent",
            retry_after=retry_after,
        )
    if isinstance(exc, requests.ConnectionError | aiohttp.ClientError):
        return UnknownOutcomeError(
            "connection to Twilio broke after the request was sent: the text may have been accepted"
        )
    return UnknownOutcomeError(f"unexpected answer from Twilio ({type(exc).__name__})")

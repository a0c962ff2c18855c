"""Twilio sends over aiohttp (the transport of the ``twilio`` package's own async client), on
the process's shared event loop (``app.aioloop``) where the engine awaits them.

With the requests transport every send in flight held a thread doing its own HTTP work under the
GIL; here one loop thread does all the HTTP, which costs much less CPU per send.
"""

from __future__ import annotations

import base64
import contextvars
import logging
from typing import Any

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from aiohttp.connector import Connection
from aiohttp.payload import BytesPayload
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response

from app.aioloop import monotonic
from app.providers.base import NotSent

# The answer's Retry-After, per send: each send runs as its own task, and a task's context is
# its own copy, so concurrent sends never see each other's value.
_retry_after: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "twilio_retry_after", default=None
)


def last_retry_after() -> str | None:
    """``Retry-After`` of the last answer read in the calling task."""
    return _retry_after.get()


# The request's ``send_by`` (monotonic), per send like Retry-After: checked once its
# connection is ready, and again (with BODY_SLACK) just before its body is written.
send_by: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "twilio_send_by", default=None
)


def _late(what: str, slack: float = 0.0) -> NotSent | None:
    """NotSent if this request's ``send_by`` (plus ``slack``) has passed; ``what`` was ready."""
    deadline = send_by.get()
    if deadline is None:
        return None
    late = monotonic() - deadline
    if late <= slack:
        return None
    return NotSent(f"its {what} was ready {1000 * late:.0f} ms after its slot's tolerance")


class _Connector(aiohttp.TCPConnector):
    """aiohttp's pool, checking the request's ``send_by`` once it has its connection.

    Taking a pooled connection never waits, but opening one takes a handshake and turns of a
    busy loop: a paced text that waited for that would reach Twilio late, together with the
    texts of the slots after its own, and put more than its sender's rate into one second
    there. It is not sent (NotSent) and the connection goes back to the pool for the next."""

    async def connect(
        self, req: aiohttp.ClientRequest, traces: list[Any], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        conn = await super().connect(req, traces, timeout)
        if (late := _late("connection")) is not None:
            conn.release()
            raise late
        return conn


#: How much later than ``send_by`` a request's body may still be written. The connection's
#: check (above) catches the common late text and keeps the connection; this one, which must
#: close it, is for the loop stalled in between (a long callback, the GIL held elsewhere).
#: The pacer's budget: a text more than about 50 ms late could make 31 of a 30/s sender's
#: texts land in one second at Twilio (slots at 95% of the rate, LATE_TOLERANCE 20 ms).
BODY_SLACK = 0.02


class _Form(BytesPayload):
    """The request's body, written only while the request is still on time.

    On Python before 3.12 aiohttp writes a body from a task of its own, a turn of the loop
    after the connection's check; a loop stalled in between would send it late. This is the
    last moment before the request's first byte (the headers wait to go with the body): more
    than BODY_SLACK past ``send_by``, nothing is written, the connection is closed unused and
    the send is NotSent."""

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        if (late := _late("body", BODY_SLACK)) is not None:
            raise late
        await super().write_with_length(writer, content_length)


# What ``urlencode`` (``quote_plus``) writes: a byte always safe as itself, a space as ``+``,
# any other byte as ``%XX``. quote_plus runs a Python loop over every byte of every text's
# body (3% of a worker's time at a thousand texts a second); these tables are read in C.
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_BYTES = tuple(chr(b) if b in _SAFE else "+" if b == 0x20 else f"%{b:02X}" for b in range(256))


class _Chars(dict[int, str]):
    """str.translate's table: a character's code point to what it is written as (its UTF-8
    bytes, each as above), filled in the first time a character is seen."""

    def __missing__(self, code: int) -> str:
        written = _quote_bytes(chr(code).encode())
        self[code] = written
        return written


_CHARS = _Chars()


def _quote_bytes(raw: bytes) -> str:
    return "".join(map(_BYTES.__getitem__, raw))


def _quote(value: object) -> str:
    if isinstance(value, bytes):
        return _quote_bytes(value)
    return str(value).translate(_CHARS)


def form_body(data: dict[str, object]) -> str:
    """The form body exactly as requests encodes a dict (``urlencode``): lists repeat the key,
    None is left out."""
    pairs: list[str] = []
    for key, value in data.items():
        if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
            if value is not None:
                pairs.append(f"{_quote(key)}={_quote(value)}")
        else:
            pairs.extend(f"{_quote(key)}={_quote(v)}" for v in value if v is not None)
    return "&".join(pairs)


class AsyncHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]  # the library ships no types
    """The library's aiohttp client with explicit timeouts and a pool for many sends in flight.

    The library's own ``request`` (twilio 9.13) ignores the client's timeout and hands aiohttp
    ``timeout=None``, which means no timeout at all (twilio-python#925), and builds its
    ``ClientSession`` in the constructor, outside any running loop. Here the session is opened
    on the loop on first use, with separate connect and read timeouts.
    """

    def __init__(
        self, *, connect_timeout: float, read_timeout: float, logger: logging.Logger
    ) -> None:
        super().__init__(pool_connections=False, timeout=read_timeout, logger=logger)
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            # ``connect`` covers DNS and the pool, ``sock_connect`` the TCP and TLS handshakes:
            # either expiring means the request never left (aiohttp's ConnectionTimeoutError).
            connect=connect_timeout,
            sock_connect=connect_timeout,
            # Between reads of the answer: expiring means it may have been accepted.
            sock_read=read_timeout,
        )
        self._session: aiohttp.ClientSession | None = None
        self._auth: tuple[tuple[str, str], str] | None = None

    def _open(self) -> aiohttp.ClientSession:
        # No connection cap: sends in flight are already capped by the engine's thread pool,
        # and waiting for a pool slot would eat into the connect timeout.
        connector = _Connector(limit=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            # The settings object is the only source of configuration (no proxy variables).
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )
        return self._session

    async def request(
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
        session = self._session or self._open()
        sent_headers = dict(headers or {})
        if auth is not None:
            sent_headers["Authorization"] = self._basic_auth(auth)
        body = None
        if data:
            content_type = sent_headers.setdefault(
                "Content-Type", "application/x-www-form-urlencoded"
            )
            body = _Form(form_body(data).encode(), content_type=content_type)
        request_timeout = (
            self._timeout
            if timeout is None
            else aiohttp.ClientTimeout(
                total=None, connect=timeout, sock_connect=timeout, sock_read=timeout
            )
        )
        _retry_after.set(None)
        try:
            async with session.request(
                method.upper(),
                url,
                params=params,  # type: ignore[arg-type]
                data=body,
                headers=sent_headers,
                timeout=request_timeout,
                allow_redirects=allow_redirects,
            ) as response:
                # JSON is UTF-8 (RFC 8259): no charset lookup per answer.
                text = await response.text(encoding="utf-8")
        except aiohttp.ClientConnectionError as exc:
            if isinstance(exc.__cause__, NotSent):  # _Form's: aiohttp wraps what it raises
                raise exc.__cause__ from None
            raise
        _retry_after.set(response.headers.get("Retry-After"))
        return Response(response.status, text, response.headers)

    def _basic_auth(self, auth: tuple[str, str]) -> str:
        cached = self._auth
        if cached is None or cached[0] != auth:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            cached = (auth, f"Basic {token}")
            self._auth = cached
        return cached[1]

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

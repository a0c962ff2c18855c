"""Twilio sends on one asyncio event loop per process, called from the engine's send threads.

With the requests transport every send in flight held a thread doing its own HTTP work under the
GIL; here the threads only wait on a future while one loop thread does all the HTTP with aiohttp
(the transport of the ``twilio`` package's own async client), which costs much less CPU per send.
The loop is started on first use and again after a fork: a forked child never inherits a running
loop thread.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextvars
import logging
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar
from urllib.parse import urlencode

import aiohttp
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response

T = TypeVar("T")

# The answer's Retry-After, per send: each send runs as its own task, and a task's context is
# its own copy, so concurrent sends never see each other's value.
_retry_after: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "twilio_retry_after", default=None
)


def last_retry_after() -> str | None:
    """``Retry-After`` of the last answer read in the calling task."""
    return _retry_after.get()


def form_body(data: dict[str, object]) -> str:
    """The form body exactly as requests encodes a dict: lists repeat the key, None is left out."""
    pairs: list[tuple[str, object]] = []
    for key, value in data.items():
        if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
            if value is not None:
                pairs.append((key, value))
        else:
            pairs.extend((key, v) for v in value if v is not None)
    return urlencode(pairs)


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
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
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
        body = form_body(data).encode() if data else None
        if body is not None:
            sent_headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        request_timeout = (
            self._timeout
            if timeout is None
            else aiohttp.ClientTimeout(
                total=None, connect=timeout, sock_connect=timeout, sock_read=timeout
            )
        )
        _retry_after.set(None)
        async with session.request(
            method.upper(),
            url,
            params=params,  # type: ignore[arg-type]
            data=body,
            headers=sent_headers,
            timeout=request_timeout,
            allow_redirects=allow_redirects,
        ) as response:
            text = await response.text()
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


class LoopThread:
    """One event loop in a daemon thread, started lazily in the process that uses it."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None and self._pid == os.getpid():
            return loop
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                # After a fork the parent's loop thread does not exist here: start afresh.
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(
                    target=self._serve, args=(loop, ready), name=self._name, daemon=True
                )
                thread.start()
                ready.wait()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
            assert self._loop is not None
            return self._loop

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._running_loop())

    @property
    def started(self) -> bool:
        return self._loop is not None and self._pid == os.getpid()

    def stop(self, timeout: float = 5.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or self._pid != os.getpid():
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._loop = self._thread = None

"""Slow and oversized request bodies, bounded before any route sees them.

uvicorn has no timeout for reading a request's body: a client that declares a body and never
sends it would hold its request forever. This ASGI middleware reads the whole body first, with
a deadline (408 when it passes) and a size limit (413), then hands the buffered body on.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import MEDIA_TYPE

#: Twilio's callbacks are a few form fields: a much smaller limit there.
SMALL_BODY_PATHS = ("/twilio/",)
SMALL_BODY_BYTES = 64 * 1024


class _Refused(Exception):
    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


class BodyLimits:
    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        limit = SMALL_BODY_BYTES if path.startswith(SMALL_BODY_PATHS) else self.max_bytes
        try:
            body = await self._read(scope, receive, limit)
        except _Refused as refused:
            await _answer(send, refused)
            return
        except _Disconnected:
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, scope: Scope, receive: Receive, limit: int) -> bytes:
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            raise _Refused(413, "Content Too Large", f"body: larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _Disconnected
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise _Refused(413, "Content Too Large", f"body: larger than {limit} bytes")
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            raise _Refused(
                408, "Request Timeout", f"body: not received within {self.timeout:g} s"
            ) from None


class _Disconnected(Exception):
    pass


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _answer(send: Send, refused: _Refused) -> None:
    body = json.dumps(
        {
            "type": "about:blank",
            "title": refused.title,
            "status": refused.status,
            "detail": refused.detail,
        }
    ).encode()
    headers: list[Any] = [
        (b"content-type", MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": refused.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

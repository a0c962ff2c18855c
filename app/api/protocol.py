"""uvicorn's h11 protocol with a deadline for a request's headers.

uvicorn closes idle keep-alive connections but never times out a request still arriving: a
client that opens a connection and dribbles its headers (or sends none) holds it forever, and
enough of them fill ``--limit-concurrency``. Here a connection whose next request has not fully
arrived ``API_BODY_TIMEOUT_SECONDS`` after it opened (or after the previous answer) is closed;
the body's own deadline is ``app.api.limits``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.settings import get_settings


class H11WithDeadline(H11Protocol):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._seconds = get_settings().api_body_timeout_seconds

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self._seconds, self._expired)

    def _expired(self) -> None:
        # Still waiting for a request's headers (IDLE): close. A request under way is the
        # body deadline's, or the app's, to finish.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

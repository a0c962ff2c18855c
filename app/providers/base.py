"""The one small interface every SMS provider implements.

A provider sends one text and returns the provider's message id, or raises one of three errors.
The kind of error decides what the ledger does next, so providers must classify carefully:
retrying a permanent error wastes money, and resending an unknown outcome texts a customer twice.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from app.aioloop import monotonic


class ProviderError(Exception):
    """Base for provider failures. ``code`` is the provider's error code, if it gave one."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TransientError(ProviderError):
    """Worth retrying later (rate limited, 5xx, connection refused before the request went out)."""

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class PermanentError(ProviderError):
    """Never retried: the number is invalid, unreachable, unsubscribed, or the request is wrong."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        opted_out: bool = False,
        undeliverable: bool = False,
    ) -> None:
        super().__init__(message, code=code)
        # The recipient told the provider to stop: no later day may try again.
        self.opted_out = opted_out
        # The number cannot take texts (a landline): later texts to it are skipped.
        self.undeliverable = undeliverable


class UnknownOutcomeError(ProviderError):
    """The request may have been accepted (e.g. a read timeout): never resend blindly."""


class NotSent(Exception):
    """The request was not made: it could not be on its way by its ``send_by`` (a busy
    process, a connection still being opened). Nothing reached the provider: the text may
    take a later slot of its sender's rate."""


@dataclass(frozen=True)
class SentMessage:
    """What a provider knows about a message it created (used by reconciliation)."""

    message_id: str
    to: str
    body: str
    created_at: datetime | None
    status: str | None = None


class SmsProvider(Protocol):
    """``send`` returns the provider's message id. Implementations must be thread-safe.

    ``valid_for`` is how many seconds the text may wait in the provider's own queue before it
    must be dropped (the organization's window closes then); None means no limit of ours.
    ``send_by`` (monotonic seconds) is when the request must be on its way at the latest: a
    paced text's slot and tolerance. Past it, ``send_async`` raises NotSent instead of sending.
    Every method the sender and reconciliation call is declared here.
    """

    name: str
    #: The account texts are sent from: the scope of the circuit breaker (an outage there
    #: stops every sender of the account).
    account: str
    #: True when ``find_sent`` can say whether a message went out (reconciliation is possible).
    can_reconcile: bool
    #: True when its senders have rate limits to keep (segments per second); the console's
    #: local record has none.
    paced: bool

    def send(
        self, to: str, body: str, sender: str | None, *, valid_for: int | None = None
    ) -> str: ...

    async def send_async(
        self,
        to: str,
        body: str,
        sender: str | None,
        *,
        valid_for: int | None = None,
        send_by: float | None = None,
    ) -> str:
        """``send`` on the process's shared event loop (the sender's path)."""
        ...

    def close(self) -> None:
        """Release connections; called once when the process's sender closes."""
        ...

    def find_sent(
        self, *, to: str, body: str, sender: str | None, since: datetime
    ) -> SentMessage | None:
        """The message to ``to`` with ``body`` created at or after ``since``, if any."""
        ...


class BlockingProvider:
    """For providers that can only block: ``send_async`` runs ``send`` on the loop's thread
    pool (the sender sizes it to SMS_CONCURRENCY); nothing to close."""

    name: str = "blocking"
    account: str = "default"
    can_reconcile: bool = False
    paced: bool = True

    def send(self, to: str, body: str, sender: str | None, *, valid_for: int | None = None) -> str:
        raise NotImplementedError

    async def send_async(
        self,
        to: str,
        body: str,
        sender: str | None,
        *,
        valid_for: int | None = None,
        send_by: float | None = None,
    ) -> str:
        if send_by is not None and monotonic() > send_by:
            raise NotSent("its slot's tolerance had passed when it was to be sent")
        call = functools.partial(self.send, to, body, sender, valid_for=valid_for)
        return await asyncio.get_running_loop().run_in_executor(None, call)

    def close(self) -> None:
        return None

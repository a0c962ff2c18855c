"""A ledger row's status: the one vocabulary of the ledger, the sender and the reports."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    PENDING = "pending"  # waiting for its attempt (due now, held for the window, or deferred)
    SENDING = "sending"  # claimed: its request is about to be or is being made
    SENT = "sent"  # the provider accepted it
    FAILED = "failed"  # refused for good, or its own number kept failing
    SKIPPED = "skipped"  # not sent, on purpose (cancelled, renewed, opted out, superseded …)
    UNKNOWN = "unknown"  # the provider may have accepted it: reconciliation asks


#: A text in one of these may have reached the customer.
MAY_HAVE_SENT = frozenset({Status.SENT, Status.SENDING, Status.UNKNOWN})

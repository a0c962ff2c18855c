"""Errors a person can act on. Each carries one line that names what is wrong."""

from __future__ import annotations


class ReminderError(Exception):
    """Base: the message is shown to the operator as one line, exit code non-zero.

    ``details`` (a CSV's bad rows, say) are printed above that line, one per line, so a file
    can be fixed in one pass.
    """

    def __init__(self, message: str, *, details: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.details = details


class ConfigError(ReminderError):
    """A setting is missing or invalid; the process refuses to start."""


class NotFoundError(ReminderError):
    """An organization, template or row the user named does not exist."""


class ValidationError(ReminderError):
    """Input (a CSV row, a template, a phone number, an option) is not acceptable."""

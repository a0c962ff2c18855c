"""Errors a person can act on. Each carries one line that names what is wrong."""

from __future__ import annotations


class ReminderError(Exception):
    """Base: the message is shown to the operator as one line, exit code non-zero."""


class ConfigError(ReminderError):
    """A setting is missing or invalid; the process refuses to start."""


class NotFoundError(ReminderError):
    """An organization, template or row the user named does not exist."""


class ValidationError(ReminderError):
    """Input (a CSV row, a template, a phone number, an option) is not acceptable."""

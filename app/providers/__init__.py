"""SMS providers by name: ``SMS_PROVIDER=console|twilio`` through one factory."""

from __future__ import annotations

from app.errors import ConfigError
from app.providers.base import (
    PermanentError,
    ProviderError,
    SentMessage,
    SmsProvider,
    TransientError,
    UnknownOutcomeError,
)
from app.settings import Settings

__all__ = [
    "PermanentError",
    "ProviderError",
    "SentMessage",
    "SmsProvider",
    "TransientError",
    "UnknownOutcomeError",
    "build_provider",
    "check_provider_settings",
]


def check_provider_settings(settings: Settings) -> None:
    """Refuse to start (raise ConfigError) when the chosen provider lacks what it needs."""
    if settings.sms_provider == "twilio":
        from app.providers.twilio import check_settings

        check_settings(settings)


def build_provider(settings: Settings) -> SmsProvider:
    """A new provider instance; callers keep one per process (created after fork)."""
    if settings.sms_provider == "console":
        from app.providers.console import ConsoleProvider

        return ConsoleProvider(settings.console_output)
    if settings.sms_provider == "twilio":
        from app.providers.twilio import TwilioProvider

        provider: SmsProvider = TwilioProvider(settings)
        return provider
    raise ConfigError(f"SMS_PROVIDER={settings.sms_provider!r}: expected console or twilio")

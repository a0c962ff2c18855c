"""Phone numbers: validated and normalized to E.164 with ``phonenumbers``."""

from __future__ import annotations

import phonenumbers


class InvalidPhone(ValueError):
    """The text is not a valid phone number; the message says why."""


def normalize_phone(raw: str, default_country: str) -> str:
    """``"(415) 555-2671"`` with ``US`` -> ``"+14155552671"``; raise InvalidPhone otherwise."""
    text = (raw or "").strip()
    if not text:
        raise InvalidPhone("phone number is empty")
    try:
        parsed = phonenumbers.parse(text, default_country.upper())
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhone(f"not a phone number: {text!r} ({exc._msg})") from None
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidPhone(f"not a valid phone number: {text!r}")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def mask_phone(phone: str | None) -> str:
    """Keep the country code and last two digits: enough to trace, not enough to leak."""
    if not phone:
        return "-"
    if len(phone) <= 5:
        return "*" * len(phone)
    return phone[:3] + "*" * (len(phone) - 5) + phone[-2:]

"""Countries: the codes ``phonenumbers`` can read national numbers for, and a zone's country.

An organization's country decides how a national number ("06 12 34 56 78") is read. A code
``phonenumbers`` has no metadata for (``ZZ``, ``XX``) would make every national number invalid,
so it is refused where it is given; a time zone whose tzdata entry names one country (Europe/Paris:
FR) supplies the default.
"""

from __future__ import annotations

import importlib.resources
from functools import lru_cache
from pathlib import Path

import phonenumbers

SYSTEM_ZONEINFO = Path("/usr/share/zoneinfo")


def check_country(raw: str) -> str:
    """``"fr"`` -> ``"FR"``; ValueError unless ``phonenumbers`` knows the region."""
    value = (raw or "").strip().upper()
    if len(value) != 2 or not value.isalpha():
        raise ValueError(f"expected a two-letter country code like US, got {raw!r}")
    if value not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(
            f"{value} is not a country with phone numbers (expected an ISO 3166 code like US, "
            "FR or DE)"
        )
    return value


def _zone_table() -> str:
    """zone.tab from the pinned ``tzdata`` package, else from the system's zoneinfo."""
    try:
        return importlib.resources.files("tzdata").joinpath("zoneinfo", "zone.tab").read_text()
    except (ModuleNotFoundError, OSError):
        try:
            return (SYSTEM_ZONEINFO / "zone.tab").read_text(encoding="utf-8")
        except OSError:
            return ""


@lru_cache(maxsize=1)
def _zone_countries() -> dict[str, str]:
    """{zone: country} from zone.tab, where each zone belongs to exactly one country."""
    found: dict[str, set[str]] = {}
    for line in _zone_table().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) >= 3:
            found.setdefault(columns[2].strip(), set()).add(columns[0].strip().upper())
    return {
        zone: next(iter(codes))
        for zone, codes in found.items()
        if len(codes) == 1 and next(iter(codes)) in phonenumbers.SUPPORTED_REGIONS
    }


def zone_country(zone: str) -> str | None:
    """The one country a time zone names (``Europe/Paris`` -> ``FR``); None for ``UTC``,
    ``Etc/GMT+5`` and other zones that name no country."""
    return _zone_countries().get(zone)

"""How many SMS segments a text costs, counted the way carriers do.

A text that fits the GSM 03.38 alphabet is sent as GSM-7: 160 characters in one segment, or 153
per segment when split (the rest is the concatenation header). Characters of the extension table
take two septets each. One character outside both tables turns the whole text into UCS-2: 70 in
one segment, 67 per segment when split, where characters outside the Basic Multilingual Plane
(most emoji) take two UTF-16 code units.
"""

from __future__ import annotations

from dataclasses import dataclass

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

GSM7 = "GSM-7"
UCS2 = "UCS-2"


@dataclass(frozen=True)
class SegmentInfo:
    encoding: str  # "GSM-7" or "UCS-2"
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int
    #: The characters that forced UCS-2, in order of first appearance (empty for GSM-7).
    non_gsm_chars: tuple[str, ...] = ()


def _pack(widths: list[int], single: int, multi: int) -> int:
    """Segments for characters of these widths: one if all fit in ``single``, else ``multi``
    per segment, never splitting a character (an escape sequence or a surrogate pair moves
    whole to the next segment, as handsets and carriers do)."""
    total = sum(widths)
    if total <= single:
        return 1 if total else 0
    segments, used = 1, 0
    for width in widths:
        if used + width > multi:
            segments, used = segments + 1, 0
        used += width
    return segments


GSM7_ALL = GSM7_BASIC | GSM7_EXTENSION


def count_segments(body: str) -> SegmentInfo:
    chars = set(body)
    if chars <= GSM7_BASIC:  # the common case: one septet per character
        n = len(body)
        return SegmentInfo(GSM7, n, (1 if n else 0) if n <= 160 else -(-n // 153))
    if chars <= GSM7_ALL:
        widths = [2 if ch in GSM7_EXTENSION else 1 for ch in body]
        return SegmentInfo(GSM7, sum(widths), _pack(widths, 160, 153))
    offending = tuple(
        dict.fromkeys(ch for ch in body if ch not in GSM7_BASIC and ch not in GSM7_EXTENSION)
    )
    # UTF-16 code units: characters outside the Basic Multilingual Plane take two.
    widths = [2 if ord(ch) > 0xFFFF else 1 for ch in body]
    return SegmentInfo(UCS2, sum(widths), _pack(widths, 70, 67), offending)

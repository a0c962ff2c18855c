"""Look-alike characters that silently switch a text to UCS-2, and their GSM-7 equivalents.

A curly apostrophe pasted from a word processor costs a text its GSM-7 encoding: 70 characters
a segment instead of 160, for every customer. The replacements are those of the table Twilio's
Smart Encoding uses (https://www.twilio.com/docs/messaging/services/smart-encoding-char-list),
grouped here by the GSM-7 text each character becomes; ``template set --smart-encoding`` applies
them to a template, and ``template set``/``preview`` name them with what they cost.
"""

from __future__ import annotations

from app.domain.segments import GSM7_ALL, count_segments

_BY_REPLACEMENT: dict[str, str] = {
    '"': "\u00ab\u00bb\u201c\u201d\u201e\u02ba\u02ee\u201f\u275d\u275e\u301d\u301e\uff02",
    "'": (
        "\u2018\u2019\u02bb\u02c8\u02bc\u02bd\u02b9\u201b\uff07\u00b4\u02ca\u0060\u02cb"
        "\u275b\u275c\u0313\u0314\ufe10\ufe11\u2017"
    ),
    "/": "\u00f7\u29f8\u0337\u0338\u2044\u2215\uff0f",
    "1/4": "\u00bc",
    "1/2": "\u00bd",
    "3/4": "\u00be",
    "\\": "\u29f9\u29f5\u20e5\ufe68\uff3c",
    "_": "\u0332\uff3f",
    "|": "\u20d2\u20d3\u2223\uff5c\u23b8\u23b9\u23d0\u239c\u239f",
    "-": "\u23bc\u23bd\u2015\ufe63\uff0d\u2010\u2043\u2013\u2014\u2022",
    "@": "\ufe6b\uff20",
    "$": "\ufe69\uff04",
    "!": "\u01c3\ufe15\ufe57\uff01",
    "!!": "\u203c",
    "#": "\ufe5f\uff03",
    "%": "\ufe6a\uff05",
    "&": "\ufe60\uff06",
    ",": "\u201a\u0326\ufe50\ufe51\uff0c\uff64\u3001",
    "(": "\u2768\u276a\ufe59\uff08\u27ee\u2985",
    ")": "\u2769\u276b\ufe5a\uff09\u27ef\u2986",
    "*": (
        "\u204e\u2217\u229b\u2722\u2723\u2724\u2725\u2731\u2732\u2733\u273a\u273b\u273c"
        "\u273d\u2743\u2749\u274a\u274b\u29c6\ufe61\uff0a"
    ),
    "+": "\u02d6\ufe62\uff0b",
    ".": "\u3002\ufe52\uff0e\uff61",
    "...": "\u2026",
    ":": "\u02d0\u02f8\u2982\ua789\ufe13\uff1a",
    ";": "\u204f\ufe14\ufe54\uff1b",
    "<": "\ufe64\uff1c\u2039",
    ">": "\ufe65\uff1e\u203a",
    "=": "\u0347\ua78a\ufe66\uff1d",
    "?": "\ufe16\ufe56\uff1f",
    "^": "\u02c6\u0302\uff3e\u1dcd",
    "{": "\u2774\ufe5b\uff5b",
    "}": "\u2775\ufe5c\uff5d",
    "[": "\uff3b",
    "]": "\uff3d",
    "~": "\u02dc\u02f7\u0303\u0330\u0334\u223c\uff5e",
    " ": (
        "\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f"
        "\u205f\u3000\u2028\u2029\t"
    ),
    "": "\u200b\u2060\ufeff",
}
# Fullwidth digits and Latin capitals (U+FF10-FF19, U+FF21-FF3A) and the small capitals.
_FULLWIDTH = {chr(0xFF10 + i): str(i) for i in range(10)} | {
    chr(0xFF21 + i): chr(ord("A") + i) for i in range(26)
}
_SMALL_CAPITALS = dict(
    zip(
        "\u1d00\u0299\u1d04\u1d05\u1d07\ua730\u0262\u029c\u026a\u1d0a\u1d0b\u029f\u1d0d\u0274"
        "\u1d0f\u1d18\u0280\ua731\u1d1b\u1d1c\u1d20\u1d21\u028f\u1d22",
        "ABCDEFGHIJKLMNOPRSTUVWYZ",
        strict=True,
    )
)

SMART_ENCODING: dict[str, str] = (
    {ch: replacement for replacement, chars in _BY_REPLACEMENT.items() for ch in chars}
    | _FULLWIDTH
    | _SMALL_CAPITALS
)
_TABLE = str.maketrans(SMART_ENCODING)


def lookalikes(text: str) -> tuple[str, ...]:
    """The characters of ``text`` outside GSM-7 that have a GSM-7 equivalent, in order."""
    return tuple(dict.fromkeys(ch for ch in text if ch not in GSM7_ALL and ch in SMART_ENCODING))


def smart_encode(text: str) -> str:
    """``text`` with every look-alike replaced by its GSM-7 equivalent."""
    return text.translate(_TABLE)


def describe(ch: str) -> str:
    """``’ (U+2019)``: a character as a user can find it in an editor."""
    shown = ch if ch.isprintable() and not ch.isspace() else ""
    return f"{shown} (U+{ord(ch):04X})".lstrip()


def lookalike_note(body: str) -> str | None:
    """One line naming the look-alikes of a sample text and what they cost; None if none."""
    chars = lookalikes(body)
    if not chars:
        return None
    now, smart = count_segments(body), count_segments(smart_encode(body))
    names = ", ".join(describe(ch) for ch in chars[:10])
    cost = (
        f"{_segments(now.segments)} instead of {smart.segments} per text"
        if now.segments != smart.segments
        else f"{_segments(now.segments)} per text either way at this length"
    )
    one = len(chars) == 1
    rest = "" if smart.encoding == "GSM-7" else " (other characters keep it UCS-2)"
    return (
        f"{names} {'switches' if one else 'switch'} the text to UCS-2: {cost}; "
        f"template set --smart-encoding replaces {'it' if one else 'them'} with "
        f"{'its GSM-7 equivalent' if one else 'their GSM-7 equivalents'}{rest}"
    )


def _segments(n: int) -> str:
    return f"{n} segment{'' if n == 1 else 's'}"

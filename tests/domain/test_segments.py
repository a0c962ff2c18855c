"""Segment counting as carriers do it: GSM-7 160/153, UCS-2 70/67, escapes and emoji whole."""

from __future__ import annotations

import pytest

from app.domain.segments import GSM7, GSM7_BASIC, GSM7_EXTENSION, UCS2, count_segments


def test_empty_body_is_no_segment() -> None:
    info = count_segments("")
    assert (info.encoding, info.units, info.segments) == (GSM7, 0, 0)


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)],
)
def test_gsm7_boundaries(length: int, segments: int) -> None:
    info = count_segments("a" * length)
    assert (info.encoding, info.units, info.segments) == (GSM7, length, segments)


def test_the_whole_basic_table_is_gsm7() -> None:
    body = "".join(sorted(GSM7_BASIC))
    info = count_segments(body)
    assert info.encoding == GSM7 and info.units == len(GSM7_BASIC) == 127
    assert info.non_gsm_chars == ()


@pytest.mark.parametrize("char", sorted(GSM7_EXTENSION))
def test_extension_characters_count_twice(char: str) -> None:
    info = count_segments("a" * 158 + char)
    assert (info.encoding, info.units, info.segments) == (GSM7, 160, 1)
    assert count_segments("a" * 159 + char).segments == 2


def test_euro_sign_pushes_over_one_segment() -> None:
    assert count_segments("€" * 80).segments == 1  # 160 septets
    assert count_segments("€" * 81).segments == 2  # 162 septets


def test_escape_sequence_is_never_split_across_segments() -> None:
    # 152 septets, then "€" (2) would straddle the 153 boundary: it moves whole to segment 2.
    body = "a" * 152 + "€" + "a" * 152
    info = count_segments(body)
    assert info.units == 306  # would fit 2 x 153 if split, but it cannot be
    assert info.segments == 3
    assert count_segments("a" * 151 + "€" + "a" * 153).segments == 2  # 153 + 153 exactly


def test_gsm_lookalikes_are_not_gsm() -> None:
    # Curly quotes, the backtick, ç (GSM has only Ç) and Ω-lookalikes force UCS-2.
    for char in ("\u2019", "`", "ç", "\u2126", "\t", "\x1b"):
        info = count_segments("Hello " + char)
        assert info.encoding == UCS2, repr(char)
        assert info.non_gsm_chars == (char,)


@pytest.mark.parametrize(
    ("length", "segments"),
    [(70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)],
)
def test_ucs2_boundaries(length: int, segments: int) -> None:
    info = count_segments("ж" * length)
    assert (info.encoding, info.units, info.segments) == (UCS2, length, segments)


def test_one_non_gsm_character_makes_everything_ucs2() -> None:
    info = count_segments("a" * 69 + "ł")
    assert (info.encoding, info.units, info.segments) == (UCS2, 70, 1)
    info = count_segments("a" * 70 + "ł")
    assert (info.encoding, info.segments) == (UCS2, 2)
    assert info.non_gsm_chars == ("ł",)


def test_emoji_take_two_code_units() -> None:
    assert count_segments("\U0001f600" * 35).units == 70
    assert count_segments("\U0001f600" * 35).segments == 1
    assert count_segments("a" * 69 + "\U0001f600").segments == 2  # 71 units


def test_surrogate_pair_is_never_split_across_segments() -> None:
    # 66 units, then an emoji (2) would straddle the 67 boundary: it moves whole.
    body = "a" * 66 + "\U0001f44d" + "a" * 66
    info = count_segments(body)
    assert info.units == 134
    assert info.segments == 3
    assert count_segments("a" * 65 + "\U0001f44d" + "a" * 67).segments == 2


def test_offending_characters_in_order_of_first_appearance() -> None:
    info = count_segments("Olá 😀 çà ã 😀")
    assert info.encoding == UCS2
    assert info.non_gsm_chars == ("á", "😀", "ç", "ã")


def test_mixed_extension_and_ucs2_counts_extension_once() -> None:
    # In UCS-2 "€" is a single code unit: no escape is needed.
    info = count_segments("€ ж")
    assert (info.encoding, info.units) == (UCS2, 3)

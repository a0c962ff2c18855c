"""Look-alike characters: named with their cost, replaced by their GSM-7 equivalents."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.domain.segments import GSM7_ALL, GSM7_BASIC, count_segments
from app.domain.smart_encoding import SMART_ENCODING, lookalike_note, lookalikes, smart_encode


def test_every_replacement_is_gsm7_and_every_replaced_character_is_not() -> None:
    assert all(set(out) <= GSM7_ALL for out in SMART_ENCODING.values())
    assert not set(SMART_ENCODING) & GSM7_ALL


def test_the_word_processor_characters_of_the_issue_are_replaced() -> None:
    assert smart_encode("It’s “done” – really…") == 'It\'s "done" - really...'
    assert lookalikes("It’s “done” – really…") == ("’", "“", "”", "–", "…")


@given(st.text(alphabet=st.sampled_from(sorted(GSM7_BASIC) + sorted(SMART_ENCODING)), max_size=300))
def test_a_text_of_gsm7_and_lookalikes_is_gsm7_once_smart_encoded(text: str) -> None:
    encoded = smart_encode(text)

    assert set(encoded) <= GSM7_ALL
    assert lookalikes(encoded) == ()
    assert count_segments(encoded).segments <= max(count_segments(text).segments * 3, 1)


def test_the_note_names_the_characters_and_their_cost() -> None:
    body = "Hi Alex, your plan’s ending soon – renew today to keep your fiber at home running."

    assert lookalike_note(body) == (
        "’ (U+2019), – (U+2013) switch the text to UCS-2: 2 segments instead of 1 per text; "
        "template set --smart-encoding replaces them with their GSM-7 equivalents"
    )
    assert lookalike_note(smart_encode(body)) is None
    assert lookalike_note("Hi 🎉") is None  # no equivalent: nothing to suggest


def test_invisible_characters_are_named_by_code_point() -> None:
    note = lookalike_note("Hi\u00a0Alex")

    assert note is not None and note.startswith("(U+00A0) switches the text to UCS-2")

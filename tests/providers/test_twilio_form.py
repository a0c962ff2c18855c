"""The Twilio adapter's form body: byte for byte what requests (``urlencode``) would send, which
is what Twilio has always been given."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from hypothesis import given
from hypothesis import strategies as st

from app.providers.twilio_async import form_body

# Form fields as the library hands them over: text (any Unicode a body may hold), numbers
# (ValidityPeriod), bytes, None (left out) and lists (repeated keys, e.g. MediaUrl).
_scalar = st.one_of(st.text(), st.integers(), st.binary(), st.none())
_value = st.one_of(_scalar, st.lists(st.one_of(st.text(), st.none()), max_size=3))
_keys = st.text(min_size=1)


def _reference(data: dict[str, object]) -> str:
    """What requests does with a dict of form fields."""
    pairs: list[tuple[str, object]] = []
    for key, value in data.items():
        if isinstance(value, list):
            pairs.extend((key, v) for v in value if v is not None)
        elif value is not None:
            pairs.append((key, value))
    return urlencode(pairs)


@given(st.dictionaries(_keys, _value, max_size=6))
def test_form_body_is_what_urlencode_writes(data: dict[str, object]) -> None:
    assert form_body(data) == _reference(data)


def test_a_reminder_reads_back_as_written() -> None:
    body = "Hi Zoë, your plan “Gold 50 €/mo” ends in 3 days — renew: https://x.example/r?a=1&b=2"
    data: dict[str, object] = {"To": "+14155552671", "Body": body, "ValidityPeriod": 3600}
    encoded = form_body(data)
    assert encoded.startswith("To=%2B14155552671&Body=Hi+Zo%C3%AB%2C+your+plan")
    assert parse_qsl(encoded) == [
        ("To", "+14155552671"),
        ("Body", body),
        ("ValidityPeriod", "3600"),
    ]

"""The rules of telling: signatures any Standard Webhooks library accepts, retries that back off
within their bounds, and which addresses events may go to."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks import Webhook, WebhookVerificationError

from app.domain import events


@given(
    key=st.binary(min_size=1, max_size=64),
    msg_id=st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40
    ),
    body=st.binary(max_size=2000),
    skew=st.integers(min_value=-200, max_value=200),
)
def test_a_signature_verifies_with_an_independent_standard_webhooks_library(
    key: bytes, msg_id: str, body: bytes, skew: int
) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    now = datetime.now(UTC) + timedelta(seconds=skew)
    headers = events.headers(secret, msg_id=msg_id, body=body, now=now)
    Webhook(secret).verify(body, headers, json_parse=False)
    # ... and not for another body or another secret.
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers, json_parse=False)
    other = "whsec_" + base64.b64encode(key + b"x").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers, json_parse=False)


def test_a_new_secret_is_random_and_in_the_standard_format() -> None:
    a, b = events.new_secret(), events.new_secret()
    assert a != b
    assert a.startswith("whsec_") and len(base64.b64decode(a[6:])) == 32


@given(
    attempt=st.integers(min_value=1, max_value=200),
    base=st.floats(min_value=0.01, max_value=600),
    cap=st.floats(min_value=0.01, max_value=86400),
    jitter=st.floats(min_value=0, max_value=1),
)
def test_a_retry_waits_between_half_and_all_of_its_capped_exponential_step(
    attempt: int, base: float, cap: float, jitter: float
) -> None:
    step = min(cap, base * 2 ** (attempt - 1))  # the reference: no jitter
    delay = events.retry_delay(attempt, base=base, cap=cap, jitter=jitter)
    assert step / 2 - 1e-9 <= delay <= step + 1e-9
    assert delay <= cap + 1e-9


@given(attempt=st.integers(min_value=1, max_value=60), jitter=st.floats(min_value=0, max_value=1))
def test_retries_never_come_sooner_than_the_attempt_before_with_the_same_jitter(
    attempt: int, jitter: float
) -> None:
    before = events.retry_delay(attempt, base=10, cap=3600, jitter=jitter)
    after = events.retry_delay(attempt + 1, base=10, cap=3600, jitter=jitter)
    assert after >= before


def test_a_delivery_gives_up_once_its_retry_period_has_passed() -> None:
    first = datetime(2026, 12, 6, 9, tzinfo=UTC)
    day = 86400.0
    assert not events.gives_up(first_at=first, failed_at=first + timedelta(hours=23), retry_for=day)
    assert events.gives_up(first_at=first, failed_at=first + timedelta(hours=24), retry_for=day)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "0.0.0.0",
        "100.64.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "224.0.0.1",
    ],
)
def test_private_loopback_and_link_local_addresses_are_not_public(address: str) -> None:
    assert events.private_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are(address: str) -> None:
    assert not events.private_address(address)


def test_event_types_are_checked_and_default_to_all() -> None:
    assert events.parse_types(None) == events.EVENT_TYPES
    assert events.parse_types("*") == events.EVENT_TYPES
    assert events.parse_types("message.failed, message.sent") == (
        "message.sent",
        "message.failed",
    )
    with pytest.raises(ValueError, match=r"unknown event type 'message\.sen'"):
        events.parse_types("message.sen")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/x", "http:// or https://"),
        ("https:///x", "http:// or https://"),
        ("https://user:pw@example.com/x", "must not carry a user or password"),
        ("https://example.com:99999/x", "bad port"),
    ],
)
def test_an_endpoint_url_must_be_http_with_a_host_and_no_credentials(
    url: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        events.check_url(url)

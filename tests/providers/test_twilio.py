"""The Twilio adapter against a real HTTP server on 127.0.0.1 that speaks the Messages API."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.errors import ConfigError
from app.providers import build_provider, check_provider_settings, twilio_async
from app.providers.base import NotSent, PermanentError, TransientError, UnknownOutcomeError
from app.providers.twilio import TwilioProvider, check_settings, parse_retry_after
from app.settings import Settings
from tests.twilio_fake import DEFAULT_AUTH_TOKEN, DEFAULT_FROM, Behaviour, FakeTwilio

FROM = DEFAULT_FROM
SERVICE = "MG" + "1" * 32
TO = "+14155552671"


def twilio_settings(fake: FakeTwilio, **overrides: object) -> Settings:
    return fake.settings(**overrides)


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


@pytest.fixture
def provider(fake: FakeTwilio) -> Iterator[TwilioProvider]:
    p = TwilioProvider(twilio_settings(fake, webhook_base_url="https://hooks.example.org"))
    yield p
    p.close()


def make(fake: FakeTwilio, **overrides: object) -> TwilioProvider:
    return TwilioProvider(twilio_settings(fake, **overrides))


# -- settings -----------------------------------------------------------------------------
def test_missing_settings_are_named() -> None:
    empty = Settings(sms_provider="twilio")
    with pytest.raises(ConfigError) as info:
        check_provider_settings(empty)
    message = str(info.value)
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM_NUMBER"):
        assert name in message


def test_a_messaging_service_alone_is_a_sender() -> None:
    check_settings(
        Settings(
            twilio_account_sid="AC1", twilio_auth_token="t", twilio_messaging_service_sid=SERVICE
        )
    )


def test_factory_builds_twilio(fake: FakeTwilio) -> None:
    provider = build_provider(twilio_settings(fake))
    assert provider.name == "twilio" and provider.can_reconcile
    assert isinstance(provider, TwilioProvider)
    provider.close()


# -- sending ------------------------------------------------------------------------------
def test_send_posts_twilio_form_fields_and_returns_the_sid(
    fake: FakeTwilio, provider: TwilioProvider
) -> None:
    sid = provider.send(TO, "Your plan ends in 3 days", None)

    [message] = fake.messages
    assert sid == message.sid and sid.startswith("SM")
    assert message.to == TO and message.body == "Your plan ends in 3 days"
    assert message.from_ == FROM and message.messaging_service_sid is None
    assert message.status_callback == "https://hooks.example.org/twilio/status"


def test_a_send_whose_connection_is_ready_after_its_send_by_is_not_made(
    fake: FakeTwilio, provider: TwilioProvider
) -> None:
    """A paced text must be on its way by its slot's tolerance. Its connection (a new one, a
    handshake away) is ready only after that: nothing reaches Twilio (NotSent, so the text
    takes a later slot), and the connection serves the next send."""
    late = provider._loop.submit(
        provider.send_async(TO, "too late", None, send_by=time.monotonic())
    )
    with pytest.raises(NotSent):
        late.result(timeout=5)
    assert fake.requests == [] and fake.messages == []

    on_time = provider._loop.submit(
        provider.send_async(TO, "on time", None, send_by=time.monotonic() + 5)
    )
    sid = on_time.result(timeout=5)
    [message] = fake.messages
    assert message.sid == sid and message.body == "on time"


def test_a_send_whose_body_would_go_after_its_send_by_is_not_made(
    fake: FakeTwilio, provider: TwilioProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On time when its connection is ready, but the loop stalls before the body is written
    (aiohttp writes it a loop turn later): nothing reaches Twilio, and the next send works."""
    warm = provider._loop.submit(provider.send_async(TO, "warm", None))
    warm.result(timeout=5)  # a pooled connection: ready at once, well before send_by

    class Stalling(twilio_async._Connector):
        async def connect(self, *args: Any, **kwargs: Any) -> Any:
            conn = await super().connect(*args, **kwargs)
            if stall:
                time.sleep(0.2)  # the loop is blocked, as by a long callback or the GIL
            return conn

    stall = True
    monkeypatch.setattr(twilio_async, "_Connector", Stalling)
    # The next send opens a new session, on Stalling.
    provider._loop.submit(provider._async_http.close()).result(timeout=5)
    late = provider._loop.submit(
        provider.send_async(TO, "too late", None, send_by=time.monotonic() + 0.1)
    )
    with pytest.raises(NotSent):
        late.result(timeout=5)
    assert [m.body for m in fake.messages] == ["warm"]

    stall = False
    on_time = provider._loop.submit(
        provider.send_async(TO, "on time", None, send_by=time.monotonic() + 5)
    )
    on_time.result(timeout=5)
    assert [m.body for m in fake.messages] == ["warm", "on time"]


def test_sender_rule(fake: FakeTwilio) -> None:
    provider = make(fake, twilio_messaging_service_sid=SERVICE)
    try:
        provider.send(TO, "default sender", None)  # service beats the From number
        provider.send(TO, "org number", "+15005550001")
        provider.send(TO, "org service", "MG" + "2" * 32)
    finally:
        provider.close()
    default, org_number, org_service = fake.messages
    assert (default.messaging_service_sid, default.from_) == (SERVICE, None)
    assert (org_number.messaging_service_sid, org_number.from_) == (None, "+15005550001")
    assert (org_service.messaging_service_sid, org_service.from_) == ("MG" + "2" * 32, None)
    # No webhook base URL: no StatusCallback.
    assert default.status_callback is None


def test_wrong_credentials_are_permanent_and_never_show_the_token(fake: FakeTwilio) -> None:
    provider = make(fake, twilio_auth_token="not-the-right-token-xyz")
    try:
        with pytest.raises(PermanentError) as info:
            provider.send(TO, "hello", None)
    finally:
        provider.close()
    assert info.value.code == "20003"
    assert "not-the-right-token-xyz" not in str(info.value)
    assert fake.messages == []


@pytest.mark.parametrize(
    ("code", "opted_out"),
    [(21211, False), (21612, False), (21408, False), (21614, False), (21610, True), (21606, False)],
)
def test_permanent_codes(
    fake: FakeTwilio, provider: TwilioProvider, code: int, opted_out: bool
) -> None:
    fake.fail(TO, code)
    with pytest.raises(PermanentError) as info:
        provider.send(TO, "hello", None)
    assert info.value.code == str(code)
    assert info.value.opted_out is opted_out
    assert DEFAULT_AUTH_TOKEN not in str(info.value)


def test_rate_limited_with_retry_after(fake: FakeTwilio, provider: TwilioProvider) -> None:
    fake.behave(TO, Behaviour(status=429, code=20429, message="Too Many Requests", retry_after="7"))
    with pytest.raises(TransientError) as info:
        provider.send(TO, "hello", None)
    assert info.value.code == "20429"
    assert info.value.retry_after == 7.0


def test_retry_after_is_per_request_not_shared_between_threads(
    fake: FakeTwilio, provider: TwilioProvider
) -> None:
    slow_limited = "+14155550100"
    fake.behave(slow_limited, Behaviour(status=429, code=20429, retry_after="30", delay=0.2))
    fake.behave(TO, Behaviour(status=503, code=None, message="unavailable"))
    with ThreadPoolExecutor(max_workers=8) as pool:
        limited = [pool.submit(provider.send, slow_limited, "a", None) for _ in range(4)]
        unavailable = [pool.submit(provider.send, TO, "b", None) for _ in range(4)]
    for future in limited:
        error = future.exception()
        assert isinstance(error, TransientError) and error.retry_after == 30.0
    for future in unavailable:
        error = future.exception()
        assert isinstance(error, TransientError) and error.retry_after is None
        assert error.code == "503"


def test_retry_after_as_http_date() -> None:
    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("Tue, 01 Jan 2030 12:00:09 GMT", now=now) == 9.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None


def test_server_errors_are_transient_then_recover(
    fake: FakeTwilio, provider: TwilioProvider
) -> None:
    fake.outage(status=503, retry_after="2")
    for _ in range(3):
        with pytest.raises(TransientError) as info:
            provider.send(TO, "hello", None)
        assert info.value.retry_after == 2.0
    fake.recover()
    assert provider.send(TO, "hello", None).startswith("SM")
    assert len(fake.messages) == 1


def test_connection_refused_is_transient(fake: FakeTwilio) -> None:
    settings = fake.settings()
    fake.stop()  # a full outage: nothing listens on the port any more
    provider = TwilioProvider(settings)
    try:
        with pytest.raises(TransientError):
            provider.send(TO, "hello", None)
    finally:
        provider.close()


def test_outage_then_recovery_on_the_same_port() -> None:
    with FakeTwilio() as first:
        port = int(first.base_url.rsplit(":", 1)[1])
        provider = TwilioProvider(first.settings())
    try:
        with pytest.raises(TransientError):
            provider.send(TO, "while down", None)
        with FakeTwilio(port=port) as second:
            assert provider.send(TO, "after recovery", None).startswith("SM")
            assert [m.body for m in second.messages] == ["after recovery"]
    finally:
        provider.close()


def test_read_timeout_is_unknown_outcome(fake: FakeTwilio) -> None:
    fake.behave(TO, Behaviour(delay=1.5, accept=True, status=201))
    provider = make(fake, twilio_timeout_seconds=0.3)
    try:
        with pytest.raises(UnknownOutcomeError):
            provider.send(TO, "slow", None)
    finally:
        provider.close()
    # The fake took the message even though we never heard back: exactly why not to resend.
    assert [m.body for m in fake.messages] == ["slow"]


def test_connection_dropped_after_sending_is_unknown(
    fake: FakeTwilio, provider: TwilioProvider
) -> None:
    fake.behave(TO, Behaviour(drop=True, accept=True))
    with pytest.raises(UnknownOutcomeError):
        provider.send(TO, "dropped", None)


def test_many_concurrent_sends_share_one_pool(fake: FakeTwilio) -> None:
    fake.delay = 0.1
    provider = make(fake, send_concurrency=32)
    numbers = [f"+1415555{i:04d}" for i in range(96)]
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=32) as pool:
            sids = list(pool.map(lambda n: provider.send(n, "hi", None), numbers))
    finally:
        provider.close()
    elapsed = time.monotonic() - started
    assert len(set(sids)) == 96
    assert sorted(m.to for m in fake.messages) == sorted(numbers)
    # 96 sends of 100 ms each, 32 at a time: about 0.3 s, not 9.6 s.
    assert elapsed < 3.0


# -- reconciliation lookups ---------------------------------------------------------------
def test_find_sent_matches_number_body_and_time(fake: FakeTwilio, provider: TwilioProvider) -> None:
    since = datetime.now(UTC) - timedelta(minutes=5)
    fake.add_message(TO, "old text", from_=FROM, created=since - timedelta(days=2))
    fake.add_message(TO, "other text", from_=FROM)
    wanted = fake.add_message(TO, "the text", from_=FROM, status="queued")  # no DateSent yet
    fake.add_message("+14155550000", "the text", from_=FROM)

    found = provider.find_sent(to=TO, body="the text", sender=None, since=since)
    assert found is not None and found.message_id == wanted.sid
    assert found.status == "queued" and found.to == TO

    assert provider.find_sent(to=TO, body="old text", sender=None, since=since) is None
    assert provider.find_sent(to=TO, body="never sent", sender=None, since=since) is None


def test_find_sent_pages_through_results(fake: FakeTwilio, provider: TwilioProvider) -> None:
    since = datetime.now(UTC) - timedelta(minutes=5)
    first = fake.add_message(TO, "needle", from_=FROM, created=since + timedelta(seconds=1))
    for i in range(120):
        fake.add_message(TO, f"hay {i}", from_=FROM, created=since + timedelta(seconds=10 + i))
    found = provider.find_sent(to=TO, body="needle", sender=None, since=since)
    assert found is not None and found.message_id == first.sid


def test_find_sent_errors_are_transient(fake: FakeTwilio) -> None:
    settings = fake.settings()
    fake.stop()
    provider = TwilioProvider(settings)
    try:
        with pytest.raises(TransientError):
            provider.find_sent(to=TO, body="x", sender=None, since=datetime.now(UTC))
    finally:
        provider.close()


def test_provider_is_built_per_instance_without_import_side_effects() -> None:
    # Importing the module must not build a client (workers fork after import).
    import app.providers.twilio as module

    assert not any(isinstance(v, TwilioProvider) for v in vars(module).values())
    assert threading.active_count() >= 1

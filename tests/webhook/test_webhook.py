"""Twilio's callbacks on the API server (a real `reminders serve` process over HTTP), with
signatures from the twilio package's validator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import Engine, select
from twilio.request_validator import RequestValidator

from app.db.models import EarlyReceipt, OptOut, UndeliverableNumber
from app.domain import planning
from app.errors import ConfigError
from app.settings import Settings
from app.webhook.signatures import check_webhook_settings
from tests import factories
from tests.ledger_rows import get_row, make_org, make_row
from tests.serving import serve

TOKEN = "webhook-test-token-0123456789"
PUBLIC = "https://hooks.example.org"
OUR_NUMBER = "+15005550006"
SERVICE = "MG" + "3" * 32
CUSTOMER = "+14155552671"
SID = "SM" + "a" * 32


def webhook_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "sms_provider": "twilio",
        "twilio_account_sid": "AC" + "0" * 32,
        "twilio_auth_token": TOKEN,
        "twilio_from_number": OUR_NUMBER,
        "twilio_messaging_service_sid": SERVICE,
        "webhook_base_url": PUBLIC + "/",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


class Client:
    """Posts like Twilio does: form-encoded, signed over the public URL."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = requests.Session()
        self.validator = RequestValidator(TOKEN)

    def post(
        self, path: str, form: dict[str, str], *, signature: str | None = None, query: str = ""
    ) -> requests.Response:
        public = PUBLIC + path + (f"?{query}" if query else "")
        sig = self.validator.compute_signature(public, form) if signature is None else signature
        url = self.base + path + (f"?{query}" if query else "")
        return self.session.post(url, data=form, headers={"X-Twilio-Signature": sig}, timeout=5)

    def status(self, status: str, *, sid: str = SID, code: str | None = None) -> requests.Response:
        form = {"MessageSid": sid, "MessageStatus": status, "AccountSid": "AC" + "0" * 32}
        if code:
            form["ErrorCode"] = code
        return self.post("/twilio/status", form)

    def post_json(
        self,
        path: str,
        body: bytes,
        *,
        body_hash: str | None = None,
        signed_url: str | None = None,
        extra_query: str = "",
    ) -> requests.Response:
        """A JSON callback signed Twilio's way: ``bodySHA256`` in the URL, the signature over
        that full URL and no fields (``signed_url`` signs another URL instead)."""
        digest = self.validator.compute_hash(body.decode()) if body_hash is None else body_hash
        query = f"bodySHA256={digest}" + (f"&{extra_query}" if extra_query else "")
        public = PUBLIC + path + f"?{query}"
        sig = self.validator.compute_signature(signed_url or public, {})
        return self.session.post(
            self.base + path + f"?{query}",
            data=body,
            headers={"X-Twilio-Signature": sig, "Content-Type": "application/json"},
            timeout=5,
        )

    def inbound(self, body: str, *, to: str = OUR_NUMBER, **extra: str) -> requests.Response:
        form = {"From": CUSTOMER, "To": to, "Body": body, "MessageSid": "SM" + "b" * 32, **extra}
        return self.post("/twilio/inbound", form)


def webhook_env(engine: Engine) -> dict[str, str]:
    return {
        "DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "SMS_PROVIDER": "twilio",
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "TWILIO_FROM_NUMBER": OUR_NUMBER,
        "TWILIO_MESSAGING_SERVICE_SID": SERVICE,
        "WEBHOOK_BASE_URL": PUBLIC + "/",
    }


@pytest.fixture
def client(engine: Engine, tmp_path: Path) -> Iterator[Client]:
    with serve(webhook_env(engine), tmp_path, command="webhook") as server:
        c = Client(server.base)
        try:
            yield c
        finally:
            c.session.close()


def opted_out(engine: Engine) -> set[tuple[int, str, str]]:
    with engine.connect() as conn:
        return {
            (o, p, s)
            for o, p, s in conn.execute(select(OptOut.org_id, OptOut.phone_e164, OptOut.source))
        }


def test_healthz(client: Client) -> None:
    response = client.session.get(client.base + "/healthz", timeout=5)
    assert (response.status_code, response.text) == (200, "ok")


def test_refuses_to_start_without_token_or_public_url() -> None:
    twilio = Settings(sms_provider="twilio", twilio_auth_token="x")
    with pytest.raises(ConfigError, match="WEBHOOK_BASE_URL"):
        check_webhook_settings(twilio)


def test_with_the_console_provider_it_starts_closed(engine: Engine, tmp_path: Path) -> None:
    """Nothing calls back without Twilio: healthy, but every callback is refused."""
    env = {"DATABASE_URL": engine.url.render_as_string(hide_password=False)}
    with serve(env, tmp_path) as server:
        assert requests.get(server.base + "/healthz", timeout=5).status_code == 200
        posted = requests.post(
            server.base + "/twilio/inbound",
            data={"From": "+12025550100", "To": "+15005550006", "Body": "STOP"},
            headers={"X-Twilio-Signature": "anything"},
            timeout=5,
        )
        assert posted.status_code == 403


def test_valid_status_callback_updates_the_row(engine: Engine, client: Client) -> None:
    org = make_org(engine)
    rid = make_row(engine, org, status="sent", provider_message_id=SID)

    before = datetime.now(UTC)
    assert client.status("delivered").status_code == 204
    after = datetime.now(UTC)

    row = get_row(engine, rid)
    assert row.delivery_status == "delivered" and row.status == "sent"
    assert before <= row.updated_at <= after


def test_failed_delivery_keeps_the_error_code(engine: Engine, client: Client) -> None:
    org = make_org(engine)
    rid = make_row(engine, org, status="sent", provider_message_id=SID)
    client.status("sent")
    client.status("undelivered", code="30003")
    row = get_row(engine, rid)
    assert (row.delivery_status, row.error_code) == ("undelivered", "30003")


def test_a_text_expired_in_twilios_queue_waits_for_the_next_opening(
    engine: Engine, client: Client
) -> None:
    """30036: Twilio dropped it when its validity (the window's close) ran out: it was never
    delivered, so it goes back to the ledger for the next opening instead of counting as sent."""
    # The server's clock is the real one: a window that opens two hours from now is closed.
    now = datetime.now(UTC)
    opens = (now + timedelta(hours=2)).time().replace(minute=0, second=0, microsecond=0)
    closes = time((opens.hour + 1) % 24, 0)
    org = factories.make_org(
        engine,
        "somewhere",
        tz="UTC",
        now=now,
        send_time=f"{opens:%H:%M}",
        send_window=f"{opens:%H:%M}-{closes:%H:%M}",
    )
    rid = make_row(engine, org, status="sent", provider_message_id=SID)

    assert client.status("failed", code="30036").status_code == 204

    row = get_row(engine, rid)
    assert (row.status, row.reason, row.error_code) == ("pending", "held", "30036")
    assert row.next_attempt_at == planning.next_window_open(now, "UTC", (opens, closes))
    assert row.provider_message_id is None and row.delivery_status is None
    assert client.status("failed", code="30036").status_code == 204  # repeated: no change
    assert get_row(engine, rid).status == "pending"


def test_late_and_repeated_callbacks_never_move_backwards(engine: Engine, client: Client) -> None:
    org = make_org(engine)
    rid = make_row(engine, org, status="sent", provider_message_id=SID)
    for status in ("queued", "delivered", "sent", "sending", "queued", "undelivered", "delivered"):
        assert client.status(status).status_code == 204
    assert get_row(engine, rid).delivery_status == "delivered"


@pytest.mark.parametrize(
    ("signature", "query"),
    [("", ""), ("forged", ""), (None, "extra=1")],
    ids=["missing", "forged", "signed-for-another-url"],
)
def test_bad_signatures_get_403_and_change_nothing(
    engine: Engine, client: Client, signature: str | None, query: str
) -> None:
    org = make_org(engine)
    rid = make_row(engine, org, status="sent", provider_message_id=SID)
    form = {"MessageSid": SID, "MessageStatus": "delivered"}
    if signature is None:
        # A real signature, but over a different URL than the one requested.
        signature = client.validator.compute_signature(PUBLIC + "/twilio/status", form)
    response = client.post("/twilio/status", form, signature=signature, query=query)
    assert response.status_code == 403
    assert get_row(engine, rid).delivery_status is None

    stop = {"From": CUSTOMER, "To": OUR_NUMBER, "Body": "STOP"}
    assert client.post("/twilio/inbound", stop, signature="forged").status_code == 403
    assert opted_out(engine) == set()


def test_signed_url_with_query_string_is_accepted(engine: Engine, client: Client) -> None:
    org = make_org(engine)
    rid = make_row(engine, org, status="sent", provider_message_id=SID)
    form = {"MessageSid": SID, "MessageStatus": "sent"}
    assert client.post("/twilio/status", form, query="org=acme").status_code == 204
    assert get_row(engine, rid).delivery_status == "sent"


def test_unknown_sid_is_accepted_and_ignored(client: Client) -> None:
    assert client.status("delivered", sid="SM" + "f" * 32).status_code == 204


def test_stop_and_start_round_trip_for_orgs_on_the_default_number(
    engine: Engine, client: Client
) -> None:
    default_a = make_org(engine)
    default_b = make_org(engine)
    own_number = make_org(engine, sender="+15005550999")

    response = client.inbound(" stop ")
    assert response.status_code == 200 and b"<Response>" in response.content
    assert opted_out(engine) == {
        (default_a, CUSTOMER, "inbound"),
        (default_b, CUSTOMER, "inbound"),
    }
    client.inbound("STOP")  # repeated: still one row per organization
    assert len(opted_out(engine)) == 2

    client.inbound("Start")
    assert opted_out(engine) == set()
    assert own_number  # never touched: it texts from another number


@pytest.mark.parametrize(
    "word", ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"]
)
def test_every_stop_keyword(engine: Engine, client: Client, word: str) -> None:
    org = make_org(engine, sender="+15005550999")
    client.inbound(word.lower() + "!", to="+15005550999")
    assert opted_out(engine) == {(org, CUSTOMER, "inbound")}
    client.inbound("UNSTOP", to="+15005550999")
    assert opted_out(engine) == set()


def test_stop_through_a_messaging_service(engine: Engine, client: Client) -> None:
    own_service = "MG" + "4" * 32
    org = make_org(engine, sender=own_service)
    make_org(engine)  # uses the default sender: a different number
    client.inbound("STOP", to="+15005550777", MessagingServiceSid=own_service)
    assert opted_out(engine) == {(org, CUSTOMER, "inbound")}


def test_other_words_change_nothing(engine: Engine, client: Client) -> None:
    make_org(engine)
    assert client.inbound("please stop texting me at night").status_code == 200
    assert opted_out(engine) == set()


def test_start_does_not_lift_an_operators_opt_out(engine: Engine, client: Client) -> None:
    org = make_org(engine)
    with engine.begin() as conn:
        conn.execute(
            OptOut.__table__.insert().values(
                org_id=org, phone_e164=CUSTOMER, source="cli", created_at=datetime.now(UTC)
            )
        )
    client.inbound("START")
    assert opted_out(engine) == {(org, CUSTOMER, "cli")}


def test_wrong_method_and_path(client: Client) -> None:
    assert client.session.get(client.base + "/twilio/status", timeout=5).status_code == 405
    assert client.session.get(client.base + "/nope", timeout=5).status_code == 404


def _json(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_a_json_callback_signed_through_bodysha256_is_applied(
    engine: Engine, client: Client
) -> None:
    org = make_org(engine)
    rid = make_row(engine, org, status="sent", provider_message_id=SID)
    body = _json(MessageSid=SID, MessageStatus="undelivered", ErrorCode=30003)
    assert client.post_json("/twilio/status", body).status_code == 204
    row = get_row(engine, rid)
    assert (row.delivery_status, row.error_code) == ("undelivered", "30003")


def test_a_json_callback_whose_hash_or_signature_fails_gets_403(
    engine: Engine, client: Client
) -> None:
    org = make_org(engine)
    rid = make_row(engine, org, status="sent", provider_message_id=SID)
    body = _json(MessageSid=SID, MessageStatus="delivered")
    path = "/twilio/status"

    def unhashed(signature: str) -> requests.Response:
        return client.session.post(
            client.base + path,
            data=body,
            headers={"X-Twilio-Signature": signature, "Content-Type": "application/json"},
            timeout=5,
        )

    good_hash = client.validator.compute_hash(body.decode())
    other = _json(MessageSid=SID, MessageStatus="failed")
    fields = {"MessageSid": SID, "MessageStatus": "delivered"}
    refused = {
        # signed and hashed for one body, another one sent
        "body": client.post_json(path, other, body_hash=good_hash),
        # the hash in the URL is the body's, but the signature is over another hash
        "hash": client.post_json(path, body, signed_url=f"{PUBLIC}{path}?bodySHA256={'0' * 64}"),
        # signed over the bare URL, no bodySHA256: nothing vouches for the body
        "no-hash": unhashed(client.validator.compute_signature(PUBLIC + path, {})),
        "signed-without-query": client.post_json(path, body, signed_url=PUBLIC + path),
        # a form-style signature over the JSON's fields is not Twilio's JSON scheme
        "form-signature": unhashed(client.validator.compute_signature(PUBLIC + path, fields)),
    }
    assert {name: r.status_code for name, r in refused.items()} == dict.fromkeys(refused, 403)
    assert get_row(engine, rid).delivery_status is None
    not_an_object = client.post_json(path, b"[1, 2]")  # signed, hashed, but not fields
    assert not_an_object.status_code == 400
    assert not_an_object.headers["content-type"].startswith("application/problem+json")


def test_a_30005_callback_marks_the_number_and_one_before_its_sid_is_kept(
    engine: Engine, client: Client
) -> None:
    early = "SM" + "e" * 32
    assert client.status("delivered", sid=early).status_code == 204
    with engine.connect() as conn:
        kept = conn.execute(select(EarlyReceipt.sid, EarlyReceipt.status)).all()
    assert kept == [(early, "delivered")]

    org = make_org(engine)
    make_row(engine, org, status="sent", provider_message_id=SID)
    form = {"MessageSid": SID, "MessageStatus": "undelivered", "ErrorCode": "30005"}
    assert client.post("/twilio/status", {**form, "To": CUSTOMER}).status_code == 204
    with engine.connect() as conn:
        marked = conn.execute(
            select(UndeliverableNumber.org_id, UndeliverableNumber.phone_e164)
        ).all()
    assert marked == [(org, CUSTOMER)]

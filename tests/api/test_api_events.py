"""Endpoints and events over HTTP: the secret once, in the 201; org keys see only their own;
deliveries paged, filtered and replayed, and what a replay makes due arrives signed at a real
receiver on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, func, select

from app.db.models import EventEndpoint
from app.services import events as event_service
from app.services.event_delivery import deliver_due
from app.settings import Settings
from tests import factories
from tests.api.conftest import key_for
from tests.api.support import Api, problem
from tests.event_receiver import Receiver, receiver
from tests.serving import Server

ACME = "/v1/organizations/acme"
#: A public address: the served API (EVENTS_ALLOW_PRIVATE unset) takes it without a DNS lookup.
PUBLIC_URL = "https://192.0.32.10/hooks"
#: What the tests' own delivery runs use: the receiver is on 127.0.0.1, and a failure is final.
LOCAL = replace(Settings(), events_allow_private=True, events_retry_seconds=0.001)


@pytest.fixture
def host() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


def local_endpoint(db: Engine, slug: str, url: str) -> str:
    """An endpoint on 127.0.0.1, which the served API rightly refuses: made through the same
    service call the route makes, with private addresses allowed. Returns its secret."""
    with db.begin() as conn:
        made = event_service.add_endpoint(
            conn, slug, url, types=None, settings=LOCAL, now=datetime.now(UTC)
        )
    assert made.secret is not None
    return made.secret


def test_endpoint_round_trip_shows_the_secret_once(api: Api, db: Engine) -> None:
    made = api.post(f"{ACME}/endpoints", json={"url": PUBLIC_URL, "events": ["optout.created"]})
    assert made.status_code == 201, made.text
    assert made.headers["cache-control"] == "no-store"
    body = made.json()
    secret = body.pop("secret")
    assert secret.startswith("whsec_") and len(secret) > 40
    assert body["url"] == PUBLIC_URL and body["events"] == ["optout.created"]
    assert body["created_at"]

    every = api.ok("POST", f"{ACME}/endpoints", json={"url": PUBLIC_URL + "/all"})
    assert len(every["events"]) == 8

    listed = api.get(f"{ACME}/endpoints")
    assert [e["id"] for e in listed.json()["items"]] == [body["id"], every["id"]]
    assert "secret" not in listed.text and secret not in listed.text
    first = api.ok("GET", f"{ACME}/endpoints", params={"limit": 1})
    assert [e["id"] for e in first["items"]] == [body["id"]]
    rest = api.ok("GET", f"{ACME}/endpoints", params={"cursor": first["next_cursor"]})
    assert ([e["id"] for e in rest["items"]], rest["next_cursor"]) == ([every["id"]], None)

    gone = api.delete(f"{ACME}/endpoints/{body['id']}")
    assert (gone.status_code, gone.content) == (204, b"")
    assert [e["id"] for e in api.ok("GET", f"{ACME}/endpoints")["items"]] == [every["id"]]
    assert "no endpoint" in problem(api.delete(f"{ACME}/endpoints/{body['id']}"), 404)
    assert "no endpoint" in problem(api.delete(f"{ACME}/endpoints/999999"), 404)


@pytest.mark.parametrize(
    ("body", "field", "said"),
    [
        ({"url": "ftp://example.com/x"}, "url", "expected an http:// or https:// URL"),
        ({"url": "http://127.0.0.1:9/x"}, "url", "loopback or private address"),
        ({"url": "http://10.0.0.8/x"}, "url", "EVENTS_ALLOW_PRIVATE=0"),
        ({"url": "http://a..b/x"}, "url", "bad host name"),
        ({"url": PUBLIC_URL, "events": ["sms.read"]}, "events.0", "Input should be"),
        ({"url": PUBLIC_URL, "events": []}, "events", "at least 1 item"),
        ({"events": ["message.sent"]}, "url", "Field required"),
    ],
    ids=["scheme", "loopback", "private", "empty-label", "unknown-type", "no-types", "no-url"],
)
def test_a_refused_endpoint_names_its_field_and_stores_nothing(
    api: Api, db: Engine, body: dict[str, object], field: str, said: str
) -> None:
    detail = problem(api.post(f"{ACME}/endpoints", json=body), 422)
    assert detail.startswith(f"{field}: ") and said in detail
    with db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(EventEndpoint)).scalar_one() == 0


def test_an_org_key_sees_only_its_endpoints_and_an_admin_key_all(
    server: Server, api: Api, admin: Api, db: Engine
) -> None:
    mine = api.ok("POST", f"{ACME}/endpoints", json={"url": PUBLIC_URL})
    factories.make_org(db, "other", now=datetime.now(UTC))
    other = Api(server.base, key_for(db, "other"))
    theirs = other.ok("POST", "/v1/organizations/other/endpoints", json={"url": PUBLIC_URL})

    assert problem(other.get(f"{ACME}/endpoints"), 404) == "no organization 'acme'"
    # Another organization's endpoint through one's own path: as unknown as a missing one.
    problem(other.delete(f"/v1/organizations/other/endpoints/{mine['id']}"), 404)
    problem(api.delete(f"{ACME}/endpoints/{theirs['id']}"), 404)
    assert [e["id"] for e in api.ok("GET", f"{ACME}/endpoints")["items"]] == [mine["id"]]

    assert [e["id"] for e in admin.ok("GET", f"{ACME}/endpoints")["items"]] == [mine["id"]]
    admin.ok("DELETE", f"/v1/organizations/other/endpoints/{theirs['id']}")
    assert other.ok("GET", "/v1/organizations/other/endpoints")["items"] == []


def test_dead_events_are_paged_filtered_replayed_and_arrive_signed(
    server: Server, api: Api, db: Engine, host: Receiver
) -> None:
    secret = local_endpoint(db, "acme", host.url)
    phones = ["+12025550141", "+12025550142", "+12025550143"]
    for phone in phones:
        api.ok("POST", f"{ACME}/opt-outs", json={"phone": phone})
    host.fail_next = 1000
    report = deliver_due(db, LOCAL)
    assert (report.delivered, report.dead) == (0, 3)

    first = api.ok("GET", f"{ACME}/events", params={"status": "dead", "limit": 2})
    after = {"status": "dead", "cursor": first["next_cursor"]}
    rest = api.ok("GET", f"{ACME}/events", params=after)
    dead = first["items"] + rest["items"]
    assert rest["next_cursor"] is None and len(dead) == 3
    ids = [d["delivery_id"] for d in dead]
    assert ids == sorted(ids, reverse=True)  # newest first
    assert sorted(d["payload"]["data"]["phone"] for d in dead) == phones
    assert {(d["type"], d["status"], d["attempts"], d["last_status"]) for d in dead} == {
        ("optout.created", "dead", 1, 500)
    }
    assert all(d["payload"]["id"] == d["event_id"] for d in dead)
    assert api.ok("GET", f"{ACME}/events", params={"type": "message.sent"})["items"] == []
    assert problem(api.get(f"{ACME}/events", params={"status": "lost"}), 422).startswith("status: ")
    assert problem(api.get(f"{ACME}/events", params={"type": "sms"}), 422).startswith("type: ")

    host.fail_next = 0
    assert api.ok("POST", f"{ACME}/events/replay", json={}) == {"replayed": 3}
    assert deliver_due(db, LOCAL).delivered == 3
    assert sorted(host.events(secret)) == sorted(d["event_id"] for d in dead)
    delivered = api.ok("GET", f"{ACME}/events", params={"status": "delivered"})["items"]
    assert {(d["attempts"], d["last_status"]) for d in delivered} == {(2, 200)}

    one = dead[0]["event_id"]
    assert api.ok("POST", f"{ACME}/events/replay", json={"event_ids": [one]}) == {"replayed": 1}
    assert api.ok("POST", f"{ACME}/events/replay") == {"replayed": 0}  # none is dead
    both = {"event_ids": [one], "status": "dead"}
    assert "give one or the other" in problem(api.post(f"{ACME}/events/replay", json=both), 422)
    assert "no event evt_nope" in problem(
        api.post(f"{ACME}/events/replay", json={"event_ids": ["evt_nope"]}), 404
    )


def test_another_organizations_event_cannot_be_replayed(
    server: Server, api: Api, admin: Api, db: Engine, host: Receiver
) -> None:
    factories.make_org(db, "other", now=datetime.now(UTC))
    local_endpoint(db, "other", host.url)
    other = Api(server.base, key_for(db, "other"))
    other.ok("POST", "/v1/organizations/other/opt-outs", json={"phone": "+12025550143"})
    [event] = other.ok("GET", "/v1/organizations/other/events")["items"]
    assert admin.ok("GET", f"{ACME}/events")["items"] == []

    for key in (api, admin):
        refused = key.post(f"{ACME}/events/replay", json={"event_ids": [event["event_id"]]})
        assert problem(refused, 404).startswith(f"no event {event['event_id']}")
    replayed = admin.ok(
        "POST", "/v1/organizations/other/events/replay", json={"event_ids": [event["event_id"]]}
    )
    assert replayed == {"replayed": 1}

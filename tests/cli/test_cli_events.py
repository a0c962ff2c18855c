"""`reminders endpoint …` and `reminders events …`: an operator registers where a host's events
go, watches them arrive at a real HTTP receiver on 127.0.0.1 (signatures checked with the
independent `standardwebhooks` package, using the secret the CLI printed), and revives the
ones that died."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cli_support import Cli, count, write_csv
from sqlalchemy import Engine

from app.domain.events import EVENT_TYPES
from tests.event_receiver import Receiver, receiver
from tests.factories import make_org

PRIVATE = {"EVENTS_ALLOW_PRIVATE": "1"}
#: A failed attempt is the last one: dead at once.
DIES = {**PRIVATE, "EVENTS_RETRY_SECONDS": "0.001"}


@pytest.fixture
def acme(db: Engine) -> str:
    make_org(db, "acme", now=datetime.now(UTC))
    return "acme"


@pytest.fixture
def host() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


def add(cli: Cli, url: str, *args: str) -> dict[str, object]:
    made: dict[str, object] = cli.json("endpoint", "add", "acme", url, *args, env=PRIVATE)
    return made


def test_add_list_remove_round_trip(db: Engine, acme: str, cli: Cli, host: Receiver) -> None:
    shown = cli.ok(
        "endpoint", "add", "acme", host.url, "--events", "optout.created,message.sent", env=PRIVATE
    )
    # (the default is every type; asked for two, it keeps them in the documented order)
    lines = dict(line.split(": ", 1) for line in shown.out.splitlines()[1:])
    assert shown.out.startswith("added endpoint 1 for acme: " + host.url)
    assert lines["events"] == "message.sent, optout.created"
    secret = lines["secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    assert "shown only now" in shown.err and "webhook-signature" in shown.err

    everything = add(cli, host.url + "/all")
    assert everything["events"] == list(EVENT_TYPES)
    assert str(everything["secret"]).startswith("whsec_") and everything["secret"] != secret

    listed = cli.json("endpoint", "list", "acme")
    assert [(e["id"], e["url"], e["events"]) for e in listed] == [
        (1, host.url, ["message.sent", "optout.created"]),
        (2, host.url + "/all", list(EVENT_TYPES)),
    ]
    text = cli.ok("endpoint", "list").out
    assert secret not in text and "secret" not in json.dumps(listed)
    assert "events all" in text

    cli.ok("opt-out", "acme", "+12025550143")  # one event waiting for each endpoint
    removed = cli.ok("endpoint", "remove", "2", "--org", "acme")
    assert removed.out.strip() == "removed endpoint 2; 1 pending delivery cancelled"
    assert [e["id"] for e in cli.json("endpoint", "list", "acme")] == [1]
    statuses = {(d["endpoint_id"], d["status"]) for d in cli.json("events", "list")}
    assert statuses == {(1, "pending"), (2, "cancelled")}

    assert cli("endpoint", "remove", "2").error == (
        "error: no endpoint 2; see reminders endpoint list"
    )
    make_org(db, "other", now=datetime.now(UTC))
    assert "no endpoint 1 of other" in cli("endpoint", "remove", "1", "--org", "other").error
    assert [e["id"] for e in cli.json("endpoint", "list")] == [1]


@pytest.mark.parametrize(
    ("url", "args", "env", "said"),
    [
        ("ftp://example.com/hook", (), PRIVATE, "error: url: expected an http:// or https://"),
        ("https://", (), PRIVATE, "error: url: expected an http:// or https://"),
        ("http://a..b/x", (), {}, "error: url: bad host name in 'http://a..b/x'"),
        ("http://127.0.0.1:9/x", ("--events", "message.sent,sms.read"), PRIVATE, "'sms.read'"),
        ("http://127.0.0.1:9/x", (), {}, "127.0.0.1 is a loopback or private address"),
        ("http://[::1]:9/x", (), {}, "::1 is a loopback or private address"),
        ("http://10.1.2.3/x", (), {"EVENTS_ALLOW_PRIVATE": "0"}, "EVENTS_ALLOW_PRIVATE=0"),
    ],
    ids=["scheme", "no-host", "empty-label", "unknown-type", "loopback", "loopback-v6", "private"],
)
def test_a_refused_endpoint_is_one_line_and_stores_nothing(
    db: Engine, acme: str, cli: Cli, url: str, args: tuple[str, ...], env: dict[str, str], said: str
) -> None:
    refused = cli("endpoint", "add", "acme", url, *args, env=env)
    assert said in refused.error
    assert "whsec_" not in refused.out + refused.err
    assert count(db, "event_endpoints") == 0


def test_a_dead_delivery_is_listed_replayed_and_delivered(
    db: Engine, acme: str, cli: Cli, host: Receiver
) -> None:
    secret = str(add(cli, host.url)["secret"])
    cli.ok("opt-out", "acme", "+12025550143")
    host.fail_next = 1000  # the host is down

    assert cli.ok("events", "deliver", env=DIES).out.startswith("delivered 0, retrying 0, dead 1")
    dead = cli.json("events", "list", "--status", "dead", "--org", "acme")
    assert len(dead) == 1
    event_id = dead[0]["event_id"]
    assert (dead[0]["type"], dead[0]["attempts"], dead[0]["last_status"]) == (
        "optout.created",
        1,
        500,
    )
    assert dead[0]["last_error"] == "HTTP 500" and dead[0]["next_attempt_at"] is None
    line = cli.ok("events", "list", "--status", "dead").out.strip()
    assert line.startswith(event_id) and "dead" in line and "HTTP 500" in line
    assert cli.json("events", "list", "--status", "pending") == []
    assert "events: 0 waiting to be delivered, 1 dead" in cli.ok("status").out

    host.fail_next = 0  # the host is back
    replayed = cli.ok("events", "replay", "--org", "acme")
    assert replayed.out.startswith("1 delivery due again now")
    assert cli.ok("events", "deliver", env=DIES).out.strip() == "delivered 1, retrying 0, dead 0"
    assert list(host.events(secret)) == [event_id]  # verified with the printed secret
    assert cli.json("events", "list", "--status", "dead") == []
    assert "events:" not in cli.ok("status").out
    [done] = cli.json("events", "list", "--status", "delivered")
    assert (done["event_id"], done["attempts"], done["last_status"]) == (event_id, 2, 200)
    assert done["delivered_at"] is not None

    # A delivered event replayed by its id goes again, with the same id for the host's dedupe.
    assert cli.ok("events", "replay", event_id).out.startswith("1 delivery due again")
    cli.ok("events", "deliver", env=DIES)
    assert [r.headers["webhook-id"] for r in host.accepted()] == [event_id, event_id]
    assert list(host.events(secret)) == [event_id]

    assert cli.ok("events", "replay").out.startswith("0 deliveries due again")
    assert cli("events", "replay", "evt_nope").error == (
        "error: no event evt_nope; see reminders events list"
    )
    assert "not both" in cli("events", "replay", event_id, "--dead").error


def test_an_opt_out_and_opt_in_arrive_signed(
    db: Engine, acme: str, cli: Cli, host: Receiver, tmp_path: Path
) -> None:
    csv = [("c1", "Pat", "(202) 555-0143", "s1", "Fiber", "2030-01-31")]
    cli.ok("import", "acme", write_csv(tmp_path / "customers.csv", csv))
    secret = str(add(cli, host.url, "--events", "optout.created,optout.removed")["secret"])

    cli.ok("opt-out", "acme", "+12025550143")
    cli.ok("opt-in", "acme", "+12025550143")
    assert cli.ok("events", "deliver", env=PRIVATE).out.startswith("delivered 2,")

    # Every signature verifies (or this raises); they go at once, in no promised order.
    received = {e["type"]: e for e in host.events(secret).values()}
    assert set(received) == {"optout.created", "optout.removed"}
    created = received["optout.created"]
    assert created["data"]["organization"] == "acme"
    assert created["data"]["phone"] == "+12025550143"
    assert created["data"]["customer_ids"] == ["c1"]
    [request] = [r for r in host.accepted() if r.headers["webhook-id"] == created["id"]]
    assert request.headers["content-type"] == "application/json"
    assert {"webhook-id", "webhook-timestamp", "webhook-signature"} <= set(request.headers)
    assert str(created["id"]).startswith("evt_")
    assert received["optout.removed"]["id"] != created["id"]

    listed = cli.json("events", "list", "--type", "optout.created")
    assert [d["payload"] for d in listed] == [created]  # the event exactly as it was sent
    bad = cli("events", "list", "--type", "optout.maybe")
    assert "optout.maybe" in bad.error

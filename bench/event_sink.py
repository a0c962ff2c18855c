"""A host's events endpoint for the benchmarks: its own process on a free 127.0.0.1 port, so
its work does not share the delivering process's GIL.

Every POST (any path: the benchmarks give each organization its own) is answered 200 after
``--delay-ms`` and kept: path, the three Standard Webhooks headers and the body. ``GET /count``
answers ``{"requests": N, "distinct": N}`` (distinct by ``webhook-id``) while it runs; on
SIGTERM it writes everything it kept to ``--record`` (one JSON object a line) for the
benchmark to verify the signatures and count by type, and exits. tests/event_receiver.py is the
tests' in-process receiver (verifying as it goes, able to fail on purpose); this one only keeps
up.

    .venv/bin/python bench/event_sink.py --port 0 --delay-ms 20 --record /tmp/events.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def app(delay: float, kept: list[dict[str, Any]], ids: set[str]) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if delay:
            await asyncio.sleep(delay)
        got = {h: request.headers.get(h, "") for h in HEADERS}
        kept.append({"path": request.path, "headers": got, "body": body.decode()})
        ids.add(got["webhook-id"])
        return web.Response(status=200)

    async def count(_: web.Request) -> web.Response:
        return web.json_response({"requests": len(kept), "distinct": len(ids)})

    application = web.Application()
    application.router.add_get("/count", count)
    application.router.add_post("/{tail:.*}", receive)
    return application


async def serve(args: argparse.Namespace) -> list[dict[str, Any]]:
    kept: list[dict[str, Any]] = []
    runner = web.AppRunner(app(args.delay_ms / 1000.0, kept, set()), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"event sink listening on http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()
    return kept


# -- the benchmark's side -------------------------------------------------------------------
def distinct(base_url: str) -> int:
    """Distinct events (by ``webhook-id``) the running sink has received."""
    with urllib.request.urlopen(f"{base_url}/count", timeout=10) as answer:
        return int(json.load(answer)["distinct"])


@dataclass
class Received:
    """What a stopped sink's record holds, each signature checked by an independent Standard
    Webhooks implementation against its path's endpoint secret."""

    requests: int = 0
    distinct: int = 0
    bad_signatures: int = 0
    by_type: Counter[str] = field(default_factory=Counter)  # distinct events per type

    @property
    def repeated(self) -> int:
        return self.requests - self.distinct


def verify(record: Path, secrets: dict[str, str]) -> Received:
    """``secrets``: URL path -> that endpoint's secret."""
    from standardwebhooks import Webhook

    verifiers = {path: Webhook(secret) for path, secret in secrets.items()}
    got, seen = Received(), set()
    for line in record.read_text().splitlines():
        request = json.loads(line)
        got.requests += 1
        try:
            event = verifiers[request["path"]].verify(request["body"], request["headers"])
        except Exception:
            got.bad_signatures += 1
            continue
        if request["headers"]["webhook-id"] not in seen:
            seen.add(request["headers"]["webhook-id"])
            got.by_type[event["type"]] += 1
    got.distinct = len(seen)
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="answer each POST after this")
    parser.add_argument("--record", type=Path, required=True, help="written on SIGTERM")
    args = parser.parse_args()
    kept = asyncio.run(serve(args))
    with args.record.open("w") as out:
        for request in kept:
            out.write(json.dumps(request) + "\n")


if __name__ == "__main__":
    main()

"""A host's events endpoint on 127.0.0.1: records every request, verifies each signature with
an independent Standard Webhooks implementation (PyPI ``standardwebhooks``), and can be told
to fail (answer 500) for a while, or to answer slowly."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()
    answered: int

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.fail_until = 0.0  # monotonic time before which every request gets 500
        self.fail_next = 0  # this many more requests get 500
        self.delay = 0.0  # seconds each answer takes
        self.started = 0  # requests whose body was read (answered or not yet)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.started += 1
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver._lock:
                    failing = time.monotonic() < receiver.fail_until or receiver.fail_next > 0
                    if receiver.fail_next > 0:
                        receiver.fail_next -= 1
                    code = 500 if failing else 200
                    receiver.requests.append(
                        Received(
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            time.monotonic(),
                            code,
                        )
                    )
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/events"

    def fail_for(self, seconds: float) -> None:
        self.fail_until = time.monotonic() + seconds

    def accepted(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.answered == 200]

    def events(self, secret: str) -> dict[str, dict[str, Any]]:
        """Every event accepted, verified against ``secret`` (a bad signature raises),
        deduplicated by its ``webhook-id`` the way a receiver should."""
        verifier = Webhook(secret)
        out: dict[str, dict[str, Any]] = {}
        for r in self.accepted():
            payload: dict[str, Any] = verifier.verify(r.body, r.headers)
            assert payload["id"] == r.headers["webhook-id"]
            out[r.headers["webhook-id"]] = payload
        return out


@contextmanager
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    thread = threading.Thread(target=r.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()

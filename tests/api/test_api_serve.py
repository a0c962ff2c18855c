"""`reminders serve` as an operator meets it: start-up errors, readiness, slow clients."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from sqlalchemy import Engine
from twilio.request_validator import RequestValidator

from tests.api.conftest import api_env
from tests.serving import ROOT, SETTINGS_VARS, Server, free_port, serve

TOKEN = "serve-test-token-0123456789"
PUBLIC = "https://hooks.example.org"


def _serve_fails(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARS}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_a_taken_port_or_a_foreign_address_is_one_error_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert f"cannot listen on 127.0.0.1:{port}" in _serve_fails("--port", str(port))
    assert "cannot listen on 203.0.113.7" in _serve_fails("--host", "203.0.113.7", "--port", "0")


def test_readyz_names_what_is_not_reachable(server: Server, pg_url: str, tmp_path: Path) -> None:
    ready = requests.get(server.base + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json() == {"database": "ok", "broker": "ok"}
    dead = f"redis://127.0.0.1:{free_port()}/0"
    env = {**api_env(pg_url, dead), "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    with serve(env, tmp_path) as broken:
        answer = requests.get(broken.base + "/readyz", timeout=20)
    assert answer.status_code == 503
    assert answer.headers["content-type"].startswith("application/problem+json")
    detail = answer.json()["detail"]
    assert "database" in detail and "broker" in detail and str(dead.split(":")[2]) in detail


def test_answers_on_a_kept_alive_connection_do_not_stall(server: Server) -> None:
    """Headers and body are separate writes: without TCP_NODELAY each answer on a reused
    connection waits ~40 ms for the client's delayed ACK."""
    session = requests.Session()
    session.get(server.base + "/healthz", timeout=5)
    started = time.monotonic()
    for _ in range(20):
        assert session.get(server.base + "/healthz", timeout=5).status_code == 200
    assert time.monotonic() - started < 0.6  # stalled, 20 x 40 ms would be 0.8 s at least


def test_several_workers_serve_one_port(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    with serve(api_env(pg_url, redis_url), tmp_path, args=("--workers", "2")) as running:
        for _ in range(5):
            assert requests.get(running.base + "/healthz", timeout=5).text == "ok"


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no thread count")


def test_300_half_open_requests_do_not_hold_the_server(
    pg_engine: Engine, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    """Half declare a body and never send it, half never finish their headers. The server keeps
    answering within a second, with a bounded number of threads, and drops the half-open ones
    at the deadline (408 for a missing body)."""
    env = {
        **api_env(pg_url, redis_url),
        "SMS_PROVIDER": "twilio",
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "TWILIO_FROM_NUMBER": "+15005550006",
        "WEBHOOK_BASE_URL": PUBLIC,
        "API_BODY_TIMEOUT_SECONDS": "3",
    }
    with serve(env, tmp_path) as running:
        port = int(running.base.rsplit(":", 1)[1])
        held = []
        for n in range(300):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if n % 2:  # headers never finished
                s.sendall(b"POST /twilio/status HTTP/1.1\r\nHost: x\r\nContent-")
            else:  # a body declared and never sent
                s.sendall(
                    b"POST /twilio/status HTTP/1.1\r\nHost: x\r\nContent-Type: "
                    b"application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n"
                )
            held.append(s)
        try:
            time.sleep(0.5)
            started = time.monotonic()
            assert requests.get(running.base + "/healthz", timeout=1).status_code == 200
            form = {"MessageSid": "SM" + "a" * 32, "MessageStatus": "delivered"}
            signature = RequestValidator(TOKEN).compute_signature(PUBLIC + "/twilio/status", form)
            signed = requests.post(
                running.base + "/twilio/status",
                data=form,
                headers={"X-Twilio-Signature": signature},
                timeout=1,
            )
            assert signed.status_code == 204
            assert time.monotonic() - started < 1.0
            assert _threads(running.popen.pid) < 60  # not one per held request

            held[0].settimeout(10)
            answer = held[0].recv(4096)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            held[1].settimeout(10)
            assert held[1].recv(4096) == b""  # closed at the deadline, nothing answered
        finally:
            for s in held:
                s.close()

"""A real ``reminders serve`` process on 127.0.0.1, for the API and webhook tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import requests

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SETTINGS_VARS = tuple(f.metadata["env"] for f in fields(Settings))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    base: str
    popen: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serve(
    env: Mapping[str, str], tmp: Path, *, args: tuple[str, ...] = (), command: str = "serve"
) -> Iterator[Server]:
    """``reminders serve`` with only these settings; yields once ``/healthz`` answers."""
    port = free_port()
    base_env = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARS}
    full = {**base_env, "PYTHONPATH": str(ROOT), **env}
    log = tmp / f"serve-{port}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "app", command, "--port", str(port), *args],
            cwd=ROOT,
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", popen, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert popen.poll() is None, f"server exited:\n{server.text()[-3000:]}"
            try:
                if requests.get(server.base + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"server did not start:\n{server.text()[-3000:]}"
            time.sleep(0.1)
        yield server
    finally:
        popen.terminate()
        try:
            popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout=15)

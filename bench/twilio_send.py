"""Benchmark: CPU per send of the Twilio adapter alone (the twilio package over aiohttp).

Starts the local fake Messages API (tests/twilio_fake.py, a subprocess answering after
``--delay-ms``) and sends ``--texts`` texts through ``TwilioProvider.send_async`` on one event
loop, ``--concurrency`` in flight, with no ledger, pacing or Celery: the floor the worker's CPU
per text cannot go below while the twilio package is the client.

    .venv/bin/python bench/twilio_send.py [--texts 5000] [--concurrency 200] [--delay-ms 100]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.providers.twilio import TwilioProvider  # noqa: E402
from app.settings import Settings  # noqa: E402
from tests.twilio_fake import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, DEFAULT_FROM  # noqa: E402

BODY = "Hi Alex, your Gold plan expires in 3 days. Renew at example.com. Reply STOP to opt out."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _send_all(provider: TwilioProvider, n: int, concurrency: int) -> tuple[float, float]:
    room = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with room:
            await provider.send_async(f"+1415{2_000_000 + i}", BODY, DEFAULT_FROM, valid_for=3600)

    await asyncio.gather(*(one(i) for i in range(concurrency)))  # connections warm
    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.process_time() - cpu, time.monotonic() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--delay-ms", type=float, default=100.0)
    args = parser.parse_args()
    port = _free_port()
    command = [sys.executable, "-m", "tests.twilio_fake", "--port", str(port)]
    fake = subprocess.Popen(
        [*command, "--delay-ms", str(args.delay_ms)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        settings = Settings(
            sms_provider="twilio",
            twilio_account_sid=DEFAULT_ACCOUNT_SID,
            twilio_auth_token=DEFAULT_AUTH_TOKEN,
            twilio_from_number=DEFAULT_FROM,
            twilio_api_base_url=f"http://127.0.0.1:{port}",
            twilio_timeout_seconds=5.0,
        )
        provider = TwilioProvider(settings)

        async def run() -> tuple[float, float]:
            try:
                return await _send_all(provider, args.texts, args.concurrency)
            finally:
                # Sent on this script's own loop, not the shared one close() stops sessions on.
                await provider._async_http.close()

        cpu, wall = asyncio.run(run())
        print(f"sends:          {args.texts:,} in {wall:.1f} s = {args.texts / wall:,.0f}/s")
        print(f"adapter CPU:    {1e3 * cpu / args.texts:.3f} ms per send (this process)")
    finally:
        fake.terminate()
        fake.wait(timeout=10)


if __name__ == "__main__":
    main()

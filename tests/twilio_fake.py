"""A local stand-in for Twilio's Messages API: a real HTTP server on 127.0.0.1.

It speaks just enough of ``/2010-04-01/Accounts/{sid}/Messages.json`` (create and list) for the
adapter, the tests and the benchmark: it checks the account path and basic auth, reads the form
fields Twilio reads, and answers with Twilio-shaped JSON, including error bodies
``{"code", "message", "more_info", "status"}``. Behaviour is configurable per recipient number
(error codes, 429 with ``Retry-After``, slow answers, dropped connections) and globally (a fixed
delay, a full outage then recovery). Accepted messages are recorded.

In-process (the tests) it serves from a thread per connection; standalone (the benchmark) from
one asyncio loop, which costs the shared cores about a third less CPU per request. Both answer
through the same ``respond``::

    python -m tests.twilio_fake --port 4010 --delay-ms 100
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, formatdate, parsedate_to_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from app.settings import Settings

DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
DEFAULT_AUTH_TOKEN = "fake-auth-token-0123456789abcdef"
API_PREFIX = "/2010-04-01/Accounts/"
DEFAULT_FROM = "+15005550006"


@dataclass
class Behaviour:
    """What the fake does with a send to one number (``times=None``: every time)."""

    status: int = 201
    code: int | None = None
    message: str = ""
    retry_after: str | None = None
    delay: float = 0.0
    # Read the request, then close the socket without answering (after recording, if ``accept``).
    drop: bool = False
    # Record the message even though the answer is an error, a drop or too slow to be read.
    accept: bool = False
    times: int | None = None


@dataclass
class Recorded:
    sid: str
    to: str
    body: str
    from_: str | None
    messaging_service_sid: str | None
    status_callback: str | None
    date_created: datetime
    validity_period: str | None = None
    status: str = "queued"
    date_sent: datetime | None = None
    extra: dict[str, str] = field(default_factory=dict)
    # time.monotonic() when the request reached the fake: what a per-sender rate check looks at.
    received: float = 0.0
    read: float = 0.0  # ... and when the fake had read it (later if the fake waited for a core)

    def as_json(self, account_sid: str) -> dict[str, Any]:
        return {
            "account_sid": account_sid,
            "api_version": "2010-04-01",
            "body": self.body,
            "date_created": format_datetime(self.date_created, usegmt=True),
            "date_sent": format_datetime(self.date_sent, usegmt=True) if self.date_sent else None,
            "date_updated": format_datetime(self.date_created, usegmt=True),
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {},
            "to": self.to,
            "uri": f"{API_PREFIX}{account_sid}/Messages/{self.sid}.json",
        }


class FakeTwilio:
    """Start with ``with FakeTwilio() as fake:``; ``fake.base_url`` goes in TWILIO_API_BASE_URL."""

    def __init__(
        self,
        *,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = DEFAULT_AUTH_TOKEN,
        host: str = "127.0.0.1",
        port: int = 0,
        delay: float = 0.0,
        threaded: bool = True,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.delay = delay
        self.messages: list[Recorded] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._by_number: dict[str, Behaviour] = {}
        self._outage: Behaviour | None = None
        self._lock = threading.Lock()
        credentials = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self._basic_auth = f"Basic {credentials}"
        # ``threaded=False``: no server of its own (standalone mode serves it with asyncio).
        self._server = _Server((host, port), _handler_for(self)) if threaded else None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        assert self._server is not None, "standalone: use the asyncio server's base_url"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeTwilio:
        assert self._server is not None
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeTwilio:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def settings(self, **overrides: Any) -> Settings:
        """Settings for ``SMS_PROVIDER=twilio`` pointed at this fake, with its credentials."""
        values: dict[str, Any] = {
            "sms_provider": "twilio",
            "twilio_account_sid": self.account_sid,
            "twilio_auth_token": self.auth_token,
            "twilio_from_number": DEFAULT_FROM,
            "twilio_api_base_url": self.base_url,
            "twilio_timeout_seconds": 2.0,
        }
        values.update(overrides)
        return Settings(**values)

    # -- configuration ----------------------------------------------------------------------
    def behave(self, number: str, behaviour: Behaviour) -> None:
        with self._lock:
            self._by_number[number] = behaviour

    def fail(self, number: str, code: int, *, status: int = 400, message: str = "") -> None:
        self.behave(number, Behaviour(status=status, code=code, message=message or f"Error {code}"))

    def outage(self, *, status: int = 503, retry_after: str | None = None) -> None:
        """Every create answers ``status`` until :meth:`recover`."""
        with self._lock:
            self._outage = Behaviour(
                status=status,
                code=20500 if status >= 500 else None,
                message="Service unavailable",
                retry_after=retry_after,
            )

    def recover(self) -> None:
        with self._lock:
            self._outage = None

    def add_message(
        self,
        to: str,
        body: str,
        *,
        from_: str | None = None,
        created: datetime | None = None,
        status: str = "sent",
    ) -> Recorded:
        """Put a message in the account as if it had been sent earlier (for reconciliation)."""
        created = created or datetime.now(UTC)
        rec = Recorded(
            sid=_new_sid(),
            to=to,
            body=body,
            from_=from_,
            messaging_service_sid=None,
            status_callback=None,
            date_created=created,
            status=status,
            date_sent=created if status != "queued" else None,
        )
        with self._lock:
            self.messages.append(rec)
        return rec

    def sent_to(self, number: str) -> list[Recorded]:
        with self._lock:
            return [m for m in self.messages if m.to == number]

    # -- request handling (called on the server's threads) ----------------------------------
    def _behaviour_for(self, to: str) -> Behaviour | None:
        with self._lock:
            if self._outage is not None:
                return self._outage
            found = self._by_number.get(to)
            if found is None:
                return None
            if found.times is not None:
                if found.times <= 0:
                    return None
                found.times -= 1
            return found

    def write_record(self, path: str) -> None:
        """One line per accepted message: sender (From or MessagingServiceSid), To, received,
        read (monotonic)."""
        with self._lock:
            lines = [
                f"{m.from_ or m.messaging_service_sid}\t{m.to}\t{m.received:.6f}\t{m.read:.6f}\n"
                for m in self.messages
            ]
        with open(path, "w", encoding="utf-8") as out:
            out.writelines(lines)

    def _record(self, form: dict[str, str], received: float | None = None) -> Recorded:
        now = datetime.now(UTC)
        rec = Recorded(
            sid=_new_sid(),
            to=form["To"],
            body=form["Body"],
            from_=form.get("From"),
            messaging_service_sid=form.get("MessagingServiceSid"),
            status_callback=form.get("StatusCallback"),
            date_created=now,
            validity_period=form.get("ValidityPeriod"),
            status="accepted" if form.get("MessagingServiceSid") else "queued",
            received=time.monotonic() if received is None else received,
            read=time.monotonic(),
        )
        with self._lock:
            self.messages.append(rec)
        return rec

    def _list(self, query: dict[str, str]) -> tuple[list[Recorded], int, int]:
        page = int(query.get("Page", "0"))
        size = min(int(query.get("PageSize", "50")), 1000)
        with self._lock:
            found = [m for m in self.messages if _matches(m, query)]
        found.sort(key=lambda m: m.date_created, reverse=True)
        return found[page * size : (page + 1) * size], page, size


def _new_sid() -> str:
    return "SM" + uuid.uuid4().hex


def _date_of(value: str) -> str:
    # The API takes YYYY-MM-DD; the helper library sends a full ISO timestamp.
    return value.strip()[:10]


def _matches(m: Recorded, query: dict[str, str]) -> bool:
    if "To" in query and m.to != query["To"]:
        return False
    if "From" in query and m.from_ != query["From"]:
        return False
    sent = m.date_sent.date().isoformat() if m.date_sent else None
    tests: tuple[tuple[str, Callable[[str, str], bool]], ...] = (
        ("DateSent", lambda s, d: s == d),
        ("DateSent>", lambda s, d: s >= d),
        ("DateSent<", lambda s, d: s <= d),
    )
    for key, test in tests:
        if key in query:
            wanted = _date_of(query[key].lstrip("<>="))
            if sent is None or not test(sent, wanted):
                return False
    return True


@dataclass
class Reply:
    """What the fake answers to one request: sent after ``delay`` seconds, or the socket closed."""

    status: int = 200
    payload: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False

    def encode(self) -> bytes:
        """The whole HTTP/1.1 response (status line, headers, JSON body) in one buffer."""
        data = json.dumps(self.payload).encode()
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}",
            "Server: fake-twilio",
            f"Date: {formatdate(usegmt=True)}",
            "Content-Type: application/json; charset=utf-8",
            f"Content-Length: {len(data)}",
            *(f"{key}: {value}" for key, value in self.headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


_REASONS = {status.value: status.phrase for status in HTTPStatus}


def _error(status: int, code: int | None, message: str, **headers: str) -> Reply:
    payload = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}" if code else None,
        "status": status,
    }
    return Reply(status, payload, dict(headers))


def respond(
    fake: FakeTwilio, method: str, target: str, auth: str, body: bytes, received: float
) -> Reply:
    """The fake's answer to one request, whichever server read it off the socket."""
    split = urlsplit(target)
    if method == "GET":
        form = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
    else:
        form = {k: v[-1] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
    with fake._lock:
        fake.requests.append((method, target, form))
    reply = _answer(fake, method, split.path, split.query, target, auth, form, received)
    reply.delay += fake.delay
    return reply


def _answer(
    fake: FakeTwilio,
    method: str,
    path: str,
    query: str,
    target: str,
    auth: str,
    form: dict[str, str],
    received: float,
) -> Reply:
    if path != f"{API_PREFIX}{fake.account_sid}/Messages.json":
        return _error(404, 20404, f"The requested resource {path} was not found")
    if auth != fake._basic_auth:
        return _error(401, 20003, "Authenticate")
    if method == "GET":
        return _list_page(fake, path, target, form)
    if method != "POST":
        return _error(405, 20004, "Method not allowed")
    if not form.get("To"):
        return _error(400, 21604, "A 'To' phone number is required.")
    if not form.get("Body"):
        return _error(400, 21602, "Message body is required.")
    if not form.get("From") and not form.get("MessagingServiceSid"):
        return _error(400, 21603, "A 'From' or 'MessagingServiceSid' is required.")
    behaviour = fake._behaviour_for(form["To"])
    if behaviour is None:
        rec = fake._record(form, received)
        return Reply(201, rec.as_json(fake.account_sid))
    accepted = fake._record(form, received) if behaviour.accept else None
    if behaviour.drop:
        return Reply(delay=behaviour.delay, drop=True)
    if behaviour.status < 300:
        rec = accepted or fake._record(form, received)
        return Reply(behaviour.status, rec.as_json(fake.account_sid), delay=behaviour.delay)
    headers = {"Retry-After": behaviour.retry_after} if behaviour.retry_after else {}
    reply = _error(behaviour.status, behaviour.code, behaviour.message, **headers)
    reply.delay = behaviour.delay
    return reply


def _list_page(fake: FakeTwilio, path: str, target: str, query: dict[str, str]) -> Reply:
    found, page, size = fake._list(query)
    has_next = len(fake._list({**query, "Page": str(page + 1)})[0]) > 0
    next_query = urlencode({**query, "Page": str(page + 1), "PageSize": str(size)})
    payload = {
        "messages": [m.as_json(fake.account_sid) for m in found],
        "page": page,
        "page_size": size,
        "start": page * size,
        "end": page * size + len(found) - 1 if found else page * size,
        "uri": target,
        "first_page_uri": f"{path}?{urlencode({**query, 'Page': '0'})}",
        "next_page_uri": f"{path}?{next_query}" if has_next else None,
        "previous_page_uri": None,
    }
    return Reply(200, payload)


# Linux's SO_TIMESTAMPNS (and its control message): the kernel stamps each received segment with
# CLOCK_REALTIME as it arrives, so a busy fake still knows when a request reached it.
_SO_TIMESTAMPNS = 35
_STAMP_SPACE = socket.CMSG_SPACE(16)


def _stamp(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):  # not Linux: the read time stands in
        conn.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)


def _arrival(ancillary: list[tuple[int, int, bytes]]) -> float:
    """When the bytes just read reached the socket (monotonic): the kernel's stamp if it gave
    one, else now."""
    arrived = time.monotonic()
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(value) >= 16:
            seconds, nanoseconds = struct.unpack("qq", value[:16])
            arrived -= time.time() - (seconds + nanoseconds / 1e9)
    return arrived


class _StampedReader(io.RawIOBase):
    """A blocking connection's bytes, remembering when the last of them arrived: under a
    buffered reader, ``arrived`` after a request's body is read is when its last byte came in,
    however late this thread got the GIL to read it."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.arrived = time.monotonic()
        _stamp(conn)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data, ancillary, _flags, _addr = self.conn.recvmsg(len(buffer), _STAMP_SPACE)
        if data:
            self.arrived = _arrival(ancillary)
        buffer[: len(data)] = data
        return len(data)


class _Server(ThreadingHTTPServer):
    """The in-process server the tests use: a thread per connection, simple to stop and restart."""

    daemon_threads = True
    # The default backlog of 5 overflows when a worker opens a hundred connections at once: the
    # kernel then drops a handshake's last ACK and the request sent on it is lost, which the
    # adapter rightly reports as an unknown outcome. The real API never does that.
    request_queue_size = 1024

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (read timeout) closes first: writing the late answer then fails.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def _handler_for(fake: FakeTwilio) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real API
        # Without TCP_NODELAY, Nagle's algorithm and the client's delayed ACK can add ~40 ms to
        # an answer, which the real API does not have.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            self.rfile.close()  # the socket's own reader: ours replaces it
            self._raw = _StampedReader(self.connection)
            self.rfile = io.BufferedReader(self._raw)

        def _handle(self, method: str) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length) if length else b""
            received = self._raw.arrived
            reply = respond(
                fake, method, self.path, self.headers.get("Authorization", ""), body, received
            )
            if reply.delay:
                time.sleep(reply.delay)
            if reply.drop:
                self.close_connection = True
                self.connection.close()
                return
            self.wfile.write(reply.encode())

        def do_POST(self) -> None:
            self._handle("POST")

        def do_GET(self) -> None:
            self._handle("GET")

    return Handler


def _wake(readable: asyncio.Future[None]) -> None:
    if not readable.done():
        readable.set_result(None)


class _AsyncServer:
    """The standalone server (the benchmark's): one asyncio loop instead of a thread per
    connection, so the fake's own CPU and scheduling jitter stay small next to the workers'.

    A request's ``received`` is when its last byte reached the socket, from the kernel's
    receive timestamp: what a provider counts a sender's rate by. The time the fake got round
    to reading it is kept beside (``read``); the two differ by however long this process waited
    for a core, which is the instrument's delay, not the sender's."""

    def __init__(self, fake: FakeTwilio, host: str, port: int) -> None:
        self.fake = fake
        self.host = host
        self.loop = asyncio.new_event_loop()
        self.sock = socket.create_server((host, port), backlog=1024)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self._accepting = self.loop.create_task(self._accept())

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _accept(self) -> None:
        while True:
            conn, _ = await self.loop.sock_accept(self.sock)
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _stamp(conn)
            self.loop.create_task(self._connection(conn))

    async def _recv(self, conn: socket.socket) -> tuple[bytes, float]:
        """The next bytes on ``conn`` and when they arrived (monotonic)."""
        while True:
            try:
                data, ancillary, _flags, _addr = conn.recvmsg(65536, _STAMP_SPACE)
            except BlockingIOError:
                readable: asyncio.Future[None] = self.loop.create_future()
                fd = conn.fileno()
                self.loop.add_reader(fd, _wake, readable)
                try:
                    await readable
                finally:
                    self.loop.remove_reader(fd)
                continue
            return data, _arrival(ancillary)

    async def _connection(self, conn: socket.socket) -> None:
        buffer = b""
        arrived = 0.0
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data, arrived = await self._recv(conn)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, target, _version = request_line.split(" ", 2)
                headers = {}
                for line in header_lines:
                    if line:
                        key, _, value = line.partition(":")
                        headers[key.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                while len(buffer) < length:
                    data, arrived = await self._recv(conn)
                    if not data:
                        return
                    buffer += data
                body, buffer = buffer[:length], buffer[length:]
                reply = respond(
                    self.fake, method, target, headers.get("authorization", ""), body, arrived
                )
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                if reply.drop:
                    return
                await self.loop.sock_sendall(conn, reply.encode())
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, ValueError):
            return
        finally:
            conn.close()

    def serve_forever(self) -> None:
        self.loop.run_forever()

    def close(self) -> None:
        # Kept-alive connections would wait for their next request for ever: end them here.
        self.sock.close()
        self.loop.run_until_complete(self._end_connections())
        self.loop.close()

    @staticmethod
    async def _end_connections() -> None:
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def parse_date(value: str) -> datetime:
    """Twilio's RFC 2822 dates, for tests reading the fake's JSON directly."""
    return parsedate_to_datetime(value)


def main() -> None:
    parser = argparse.ArgumentParser(description="Local fake of Twilio's Messages API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4010)
    parser.add_argument(
        "--delay-ms", type=float, default=0.0, help="answer every request after this"
    )
    parser.add_argument("--account-sid", default=DEFAULT_ACCOUNT_SID)
    parser.add_argument("--auth-token", default=DEFAULT_AUTH_TOKEN)
    parser.add_argument(
        "--record",
        metavar="FILE",
        help="on exit: sender, To, received, read (monotonic) per text",
    )
    args = parser.parse_args()
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        parser.error("the fake only listens on the loopback interface")
    fake = FakeTwilio(
        account_sid=args.account_sid,
        auth_token=args.auth_token,
        delay=args.delay_ms / 1000.0,
        threaded=False,
    )
    server = _AsyncServer(fake, args.host, args.port)
    print(f"fake Twilio listening on {server.base_url} (account {fake.account_sid})", flush=True)
    # Stop cleanly on SIGTERM too (the benchmark ends it that way) and say what was accepted.
    for signum in (signal.SIGTERM, signal.SIGINT):
        server.loop.add_signal_handler(signum, server.loop.stop)
    try:
        server.serve_forever()
    finally:
        if args.record:
            fake.write_record(args.record)
        server.close()
        print(f"accepted {len(fake.messages)} messages", flush=True)


if __name__ == "__main__":
    main()

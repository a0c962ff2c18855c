"""Wake the event delivery task after a commit that wrote events, instead of at the next tick.

Enqueue after commit, structurally: ``app.db.outbox`` marks the connection that wrote events;
the engine's commit hook sends the delivery task, at most once a second per process, with a
short countdown (the hook runs just before the database's own commit; a task that comes too
early finds nothing and leaves the events to the next). A failure to reach the broker is
logged and harmless: beat's tick delivers them anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import Connection, Engine
from sqlalchemy import event as sa_event

from app.db import outbox

log = logging.getLogger("app.events")

#: A process sends the delivery task at most this often (seconds), and with this countdown.
EVERY_SECONDS = 1.0


class EventsKick:
    def __init__(self, send: Callable[[float], None], *, background: bool = False) -> None:
        self._send = send
        self._background = background  # a request thread must not wait for the broker
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, conn: Connection) -> None:
        if not conn.info.pop(outbox.WRITTEN, False):
            return
        with self._lock:
            moment = time.monotonic()
            if moment - self._last < EVERY_SECONDS:
                return
            self._last = moment
        if self._background:
            threading.Thread(target=self._kick, name="events-kick", daemon=True).start()
        else:
            self._kick()

    def _kick(self) -> None:
        try:
            self._send(EVERY_SECONDS)
        except Exception as exc:  # noqa: BLE001 - beat's tick delivers them anyway
            log.warning("events: could not enqueue their delivery (%s); the next tick will", exc)

    def install(self) -> None:
        """On every engine of this process (idempotent)."""
        if not sa_event.contains(Engine, "commit", self):
            sa_event.listen(Engine, "commit", self)

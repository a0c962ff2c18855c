"""The console provider: one readable line per text, on the log or appended to a file.

It is a real provider, the default for local runs and the demo. It cannot be asked afterwards
whether a text went out, so rows whose outcome is unknown go back to ``pending`` with it.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import datetime

from app.domain.phones import mask_phone
from app.providers.base import BlockingProvider, SentMessage

log = logging.getLogger("app.sms.console")


class ConsoleProvider(BlockingProvider):
    name = "console"
    account = "console"
    can_reconcile = False
    paced = False  # a local record: no sender's allowance to keep

    def __init__(self, output_path: str | None = None) -> None:
        self._output_path = output_path
        self._lock = threading.Lock()

    def send(self, to: str, body: str, sender: str | None, *, valid_for: int | None = None) -> str:
        message_id = "CONSOLE-" + uuid.uuid4().hex
        one_line = body.replace("\n", " ⏎ ")
        if self._output_path:
            # Whole lines under a lock, flushed at once: the file is a faithful record of sends.
            with self._lock, open(self._output_path, "a", encoding="utf-8") as out:
                out.write(f"{message_id}\t{sender or '-'}\t{to}\t{one_line}\n")
        log.info("SMS to %s from %s: %s", mask_phone(to), sender or "-", one_line)
        return message_id

    def find_sent(
        self, *, to: str, body: str, sender: str | None, since: datetime
    ) -> SentMessage | None:
        return None

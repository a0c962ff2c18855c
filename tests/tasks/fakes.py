"""A scripted SMS provider for the worker tests, plugged in with
``celery -A app.tasks.scheduler worker --sms-provider-factory tests.tasks.fakes:scripted``.

It writes each accepted text to SMS_CONSOLE_OUTPUT in the console provider's format, so tests
count provider calls the same way for both. Per phone number, ``<output>.script.json`` may list
outcomes to play in turn (``"transient"``, ``"permanent"``, ``"ok"``; the last one repeats).
Attempts are counted in ``<output>.attempts``, a file, because retries land in any process.
It can be asked whether a text went out (``find_sent`` reads the output file), like Twilio.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime
from pathlib import Path

from app.providers.base import BlockingProvider, PermanentError, SentMessage, TransientError
from app.settings import Settings


class ScriptedProvider(BlockingProvider):
    name = "scripted"
    can_reconcile = True

    def __init__(self, output: str) -> None:
        self.output = Path(output)
        self.attempts = Path(output + ".attempts")
        script = Path(output + ".script.json")
        self.script: dict[str, list[str]] = (
            json.loads(script.read_text()) if script.exists() else {}
        )
        self._lock = threading.Lock()

    def send(self, to: str, body: str, sender: str | None, *, valid_for: int | None = None) -> str:
        plan = self.script.get(to)
        if plan:
            with self._lock, self.attempts.open("a+", encoding="utf-8") as log:
                log.seek(0)
                n = sum(1 for line in log if line.rstrip("\n") == to)
                log.write(to + "\n")
            outcome = plan[min(n, len(plan) - 1)]
            if outcome == "transient":
                raise TransientError(f"scripted transient failure #{n + 1}", code="T503")
            if outcome == "permanent":
                raise PermanentError("scripted permanent failure", code="P400")
        message_id = "FAKE-" + uuid.uuid4().hex
        one_line = body.replace("\n", " ⏎ ")
        with self._lock, self.output.open("a", encoding="utf-8") as out:
            out.write(f"{message_id}\t{sender or '-'}\t{to}\t{one_line}\n")
        return message_id

    def find_sent(
        self, *, to: str, body: str, sender: str | None, since: datetime
    ) -> SentMessage | None:
        if not self.output.exists():
            return None
        one_line = body.replace("\n", " ⏎ ")
        for line in self.output.read_text(encoding="utf-8").splitlines():
            message_id, _sender, phone, text = line.split("\t", 3)
            if phone == to and text == one_line:
                return SentMessage(message_id=message_id, to=to, body=body, created_at=None)
        return None


def scripted(settings: Settings) -> ScriptedProvider:
    assert settings.console_output, "set SMS_CONSOLE_OUTPUT for the scripted provider"
    return ScriptedProvider(settings.console_output)

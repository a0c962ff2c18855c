"""How much one process takes on at once.

A process works on at most SMS_OPEN_BATCHES batches, and takes a batch only while none of its
senders already has more than ADMIT_AHEAD seconds of texts queued here: a batch for other
senders starts at once, one for a busy sender waits (or, for a Celery task, goes back to the
broker for a moment, so the pool process is free for other senders' batches and for beat's
control tasks).
"""

from __future__ import annotations

import threading

ADMIT_AHEAD = 1.0  # seconds of a sender's slots queued here before it takes no more


class Admission:
    def __init__(self, open_batches: int) -> None:
        self._max_open = open_batches
        self._open = 0
        self._queued: dict[str, int] = {}  # texts admitted, not yet sent, per sender key
        self._limit: dict[str, float] = {}  # the queue under which a key takes more
        self._changed = threading.Condition()

    def _room(self, wanted: dict[str, tuple[int, float]]) -> bool:
        self._limit.update((key, rate * ADMIT_AHEAD) for key, (_, rate) in wanted.items())
        return self._open < self._max_open and all(
            self._queued.get(key, 0) < rate * ADMIT_AHEAD for key, (_, rate) in wanted.items()
        )

    def wait_room(self, wanted: dict[str, tuple[int, float]], timeout: float) -> bool:
        """Whether there is room for ``wanted`` within ``timeout`` seconds (nothing taken)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._room(wanted), timeout)

    def enter(self, wanted: dict[str, tuple[int, float]], timeout: float) -> bool:
        """Open a batch of ``wanted`` {key: (texts, rate)} once there is room, waiting at most
        ``timeout`` seconds; False (nothing taken) if there was none in time."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._room(wanted), timeout):
                return False
            self._open += 1
            for key, (texts, _) in wanted.items():
                self._queued[key] = self._queued.get(key, 0) + texts
        return True

    def force(self, wanted: dict[str, tuple[int, float]]) -> None:
        """Open a batch whatever is queued (a run that must not give its batch back)."""
        with self._changed:
            self._open += 1
            for key, (texts, _) in wanted.items():
                self._queued[key] = self._queued.get(key, 0) + texts

    def left(self, key: str, texts: int) -> None:
        """Texts of ``key`` left the queue (sent, or handed back)."""
        if not texts:
            return
        with self._changed:
            before = self._queued.get(key, 0)
            left = before - texts
            if left > 0:
                self._queued[key] = left
            else:
                self._queued.pop(key, None)
            # Waiters care only about a key falling under its limit: wake them then, not for
            # every text.
            if left <= 0 or before >= self._limit.get(key, 0.0) > left:
                self._changed.notify_all()

    def closed(self) -> None:
        """A batch's last outcome is written."""
        with self._changed:
            self._open -= 1
            self._changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._open == 0, timeout)

    @property
    def open(self) -> int:
        return self._open

"""One thread draining one queue, started on first use and stopped with a sentinel: the shape
of the claimer and the recorder."""

from __future__ import annotations

import threading
from queue import SimpleQueue
from typing import Generic, TypeVar

T = TypeVar("T")

STOP = object()


class QueueThread(Generic[T]):
    """``put`` hands an item to the thread (started lazily); ``close`` lets it drain and stop.
    Subclasses implement ``_run``, reading ``self._queue`` until they get ``STOP``."""

    thread_name = "sms-queue"

    def __init__(self) -> None:
        self._queue: SimpleQueue[T | object] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _put(self, item: T) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name=self.thread_name, daemon=True
                    )
                    self._thread.start()
        self._queue.put(item)

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(STOP)
            thread.join(timeout=30)

    def _run(self) -> None:
        raise NotImplementedError

"""One thread taking work from the event loop in groups, started on first use and stopped with
a sentinel: the shape of the claimer and the recorder.

Items wait in a deque; the thread is woken only by the first item of a group and when a group
is full, not once per item: a thread woken a thousand times a second costs both threads the
GIL."""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from queue import Empty, SimpleQueue
from typing import Generic, TypeVar

from app.aioloop import monotonic

T = TypeVar("T")

STOP = object()
WAKE = object()
IDLE_CHECK = 1.0  # an idle thread looks again this often: a lost wake-up costs no more


class QueueThread(Generic[T]):
    """``_hand`` gives an item to the thread (started lazily), which takes what came within
    ``gather_seconds`` of the first (at most ``group_size``) and calls ``_process`` with it;
    ``close`` lets it finish what it holds and stop."""

    thread_name = "sms-queue"
    group_size = 100
    gather_seconds = 0.05

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._signals: SimpleQueue[object] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _hand(self, item: T) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name=self.thread_name, daemon=True
                    )
                    self._thread.start()
        self._items.append(item)
        waiting = len(self._items)
        if waiting == 1 or waiting == self.group_size:
            self._signals.put(WAKE)

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._signals.put(STOP)
            thread.join(timeout=30)

    def _process(self, group: list[T]) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while True:
            group, stop = self._gather()
            if group:
                self._process(group)
            if stop:
                while self._items:
                    self._process(self._take())
                return

    def _gather(self) -> tuple[list[T], bool]:
        stop = False
        if not self._items:
            with contextlib.suppress(Empty):
                stop = self._signals.get(timeout=IDLE_CHECK) is STOP
        until = monotonic() + self.gather_seconds
        while not stop and len(self._items) < self.group_size:
            left = until - monotonic()
            if left <= 0:
                break
            try:
                stop = self._signals.get(timeout=left) is STOP
            except Empty:
                break
        return self._take(), stop

    def _take(self) -> list[T]:
        group: list[T] = []
        while self._items and len(group) < self.group_size:
            group.append(self._items.popleft())
        return group

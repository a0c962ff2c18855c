"""Garbage-collector settings for a process that sends texts.

A worker holds a large heap of long-lived objects (Celery, SQLAlchemy, the Twilio library,
compiled statements) and makes many short-lived ones per text. With CPython's defaults the
oldest generation is traversed every few seconds, and each pass stopped the process for
100–160 ms: the event loop woke late, texts missed their rate-limit slots and were booked
again. Freezing what is alive after start-up and again after the first batch (when the caches
are built) leaves those passes almost nothing to traverse, and a larger young generation
means far fewer passes (bench/send_day.py --provider twilio measures the effect).
"""

from __future__ import annotations

import gc

# Allocations between young-generation passes (CPython's default is 700).
YOUNG_THRESHOLD = 10_000


def settle() -> None:
    """Collect once, then move everything alive into the permanent generation."""
    gc.collect()
    gc.freeze()


def tune() -> None:
    """For a sending process, once it has imported what it needs."""
    settle()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)

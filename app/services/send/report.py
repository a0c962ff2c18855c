"""What a batch (or a whole run) did with its texts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

COUNTERS = ("sent", "failed", "skipped", "retrying", "unknown", "held", "deferred", "lost")


@dataclass
class SendReport:
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    retrying: int = 0  # transient failure, back to pending with a next attempt
    unknown: int = 0  # outcome unknown, waiting for reconciliation
    held: int = 0  # outside the send window, waiting for it to open
    held_until: dict[str, datetime] = field(default_factory=dict)  # org slug -> window opens
    deferred: int = 0  # no rate-limit slot soon enough, or the provider down: back to pending
    lost: int = 0  # claimed or moved by someone else first
    retry_at: list[datetime] = field(default_factory=list)

    def add(self, other: SendReport) -> None:
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.retry_at.extend(other.retry_at)
        for slug, opens in other.held_until.items():
            self.note_held(slug, opens)

    def count(self, counter: str, n: int = 1) -> None:
        setattr(self, counter, getattr(self, counter) + n)

    def note_held(self, slug: str, opens: datetime) -> None:
        """Texts of ``slug`` wait for its window: the earliest opening is what a user needs."""
        self.held_until[slug] = min(opens, self.held_until.get(slug, opens))

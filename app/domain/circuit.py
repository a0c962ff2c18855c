"""The circuit breaker of one provider account, as a plain state machine.

When the provider fails for everyone (an outage), an attempt says nothing about the customer's
number, so it must not use up that text's retries: a run of transient errors across different
numbers opens the circuit; while it is open texts wait (``pending``) and one request at a time
probes the provider (one for all processes: app.services.circuit_share); the first success
closes it. A failure counts against its text's retries
only while the circuit stays closed, so a text is ``failed`` for retries only when its own
number keeps failing while others get through.

No clock and no I/O here: the caller passes ``now`` (seconds, any monotonic scale).
Checked against a reference model in tests/domain/test_circuit.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Admit(Enum):
    SEND = "send"  # closed: go
    PROBE = "probe"  # open: this request is the one probe
    WAIT = "wait"  # open: wait for the probe's answer


@dataclass
class Breaker:
    threshold: int = 5  # transient failures with no success between them ...
    min_numbers: int = 3  # ... to at least this many different numbers open the circuit
    probe_every: float = 5.0  # seconds between probes while open
    failures: int = 0
    numbers: set[str] = field(default_factory=set)
    opened_at: float | None = None
    probing: bool = False
    next_probe: float = 0.0

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def admit(self, now: float) -> Admit:
        """May a request go now?"""
        if self.opened_at is None:
            return Admit.SEND
        if not self.probing and now >= self.next_probe:
            self.probing = True
            return Admit.PROBE
        return Admit.WAIT

    def succeeded(self) -> bool:
        """A request got through; True when that closed the circuit."""
        was_open = self.opened_at is not None
        self.failures, self.numbers = 0, set()
        self.opened_at, self.probing = None, False
        return was_open

    def failed(self, number: str, now: float, *, probe: bool = False) -> bool:
        """A transient failure (or an unknown outcome) for ``number``; True when it counts
        against that text's retries (the circuit is closed after it)."""
        self.failures += 1
        self.numbers.add(number)
        if self.opened_at is None and (
            self.failures >= self.threshold and len(self.numbers) >= self.min_numbers
        ):
            self.opened_at = now
            self.next_probe = now + self.probe_every
        if probe:
            self.probing = False
            self.next_probe = now + self.probe_every
        return self.opened_at is None

    def probe_elsewhere(self, now: float) -> None:
        """Another process holds the account's probe: this one waits a probe interval."""
        self.probing = False
        self.next_probe = now + self.probe_every

    def cancelled_probe(self) -> None:
        """The probe's text did not go after all (its claim was lost): another may probe."""
        self.probing = False

    def wait_hint(self, now: float) -> float:
        """How long a text turned away should wait before it is tried again: a little longer
        the longer the outage has lasted, from one probe interval up to 15 s (so the texts are
        back soon after the provider is)."""
        if self.opened_at is None:
            return 0.0
        return min(15.0, max(self.probe_every, (now - self.opened_at) / 4))

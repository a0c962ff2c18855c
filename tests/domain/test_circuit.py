"""The circuit breaker of a provider account, checked against a reference model (Hypothesis).

The model keeps the whole history since the last success and states the rule directly: the
circuit is open exactly when that history holds THRESHOLD failures or more across MIN_NUMBERS
numbers or more; a failure counts against its text's retries exactly when the circuit is
closed after it; while open, nothing is sent but one probe at a time, no sooner than
PROBE_EVERY after the opening or the last failed probe; the first success closes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from app.domain.circuit import Admit, Breaker

THRESHOLD, MIN_NUMBERS, PROBE_EVERY = 5, 3, 2.0

NUMBERS = st.sampled_from(["+1", "+2", "+3", "+4"])
EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("fail"), NUMBERS),
        st.tuples(st.just("ok"), st.none()),
        st.tuples(st.just("ask"), st.none()),  # a text asks to go
        st.tuples(st.just("cancel"), st.none()),  # the probe's text did not go after all
    ).flatmap(lambda e: st.tuples(st.just(e), st.floats(0.0, 3.0))),
    max_size=80,
)


@dataclass
class Model:
    since_success: list[str] = field(default_factory=list)
    open_since: float | None = None
    last_probe_failed: float | None = None
    probe_out: bool = False

    @property
    def is_open(self) -> bool:
        f = self.since_success
        return len(f) >= THRESHOLD and len(set(f)) >= MIN_NUMBERS

    def may_probe(self, now: float) -> bool:
        assert self.open_since is not None
        earliest = max(self.open_since, self.last_probe_failed or self.open_since) + PROBE_EVERY
        return not self.probe_out and now >= earliest


@given(EVENTS)
def test_the_breaker_follows_the_rule(events: list[tuple[tuple[str, str | None], float]]) -> None:
    b = Breaker(threshold=THRESHOLD, min_numbers=MIN_NUMBERS, probe_every=PROBE_EVERY)
    m = Model()
    now = 0.0
    for (kind, number), step in events:
        now += step
        if kind == "fail":
            assert number is not None
            probe = m.probe_out
            counts = b.failed(number, now, probe=probe)
            was_open = m.is_open
            m.since_success.append(number)
            if m.is_open and not was_open:
                m.open_since = now
            if probe:
                m.probe_out, m.last_probe_failed = False, now
            assert counts == (not m.is_open)
        elif kind == "ok":
            closed = b.succeeded()
            assert closed == m.is_open
            m = Model()
        elif kind == "cancel":
            if m.probe_out:
                b.cancelled_probe()
                m.probe_out = False
        else:
            admitted = b.admit(now)
            if not m.is_open:
                assert admitted is Admit.SEND
            elif m.may_probe(now):
                assert admitted is Admit.PROBE
                m.probe_out = True
            else:
                assert admitted is Admit.WAIT
        assert b.is_open == m.is_open


def test_an_outage_opens_the_circuit_and_the_first_success_closes_it() -> None:
    b = Breaker(threshold=THRESHOLD, min_numbers=MIN_NUMBERS, probe_every=PROBE_EVERY)
    counted = [b.failed(f"+{i % 3}", float(i)) for i in range(8)]
    assert counted == [True] * 4 + [False] * 4  # the outage's own errors use up no retries
    assert b.admit(5.0) is Admit.WAIT and b.admit(6.0) is Admit.PROBE
    assert b.admit(6.5) is Admit.WAIT  # one probe at a time
    assert b.failed("+9", 7.0, probe=True) is False
    assert b.admit(8.0) is Admit.WAIT and b.admit(9.0) is Admit.PROBE
    assert b.succeeded() is True and b.admit(9.1) is Admit.SEND


def test_one_number_failing_alone_never_opens_it() -> None:
    """A text whose own number keeps failing while others get through uses up its retries."""
    b = Breaker(threshold=THRESHOLD, min_numbers=MIN_NUMBERS, probe_every=PROBE_EVERY)
    assert all(b.failed("+1", float(i)) for i in range(20))
    assert b.admit(21.0) is Admit.SEND

"""Reading a scrape the way Prometheus does: prometheus_client's own parser, no regexes."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]


def samples(text: str) -> Samples:
    """Every sample of one scrape: (sample name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def labels(**pairs: str) -> Labels:
    return tuple(sorted(pairs.items()))


def total(found: Samples, name: str, **where: str) -> float:
    """The sum of ``name``'s samples whose labels include ``where`` (PromQL's ``sum``)."""
    return sum(
        value
        for (sample, got), value in found.items()
        if sample == name and set(where.items()) <= set(got)
    )

"""Read a Prometheus text exposition (a paraserve /metrics answer): samples, sums and deltas between scrapes.

Used by the load-test report, the service benchmark and the reliability script; the service itself never needs it.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

Samples = Mapping[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(metrics_text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    families = text_string_to_metric_families(metrics_text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in families for s in family.samples}


def gauge(values: Samples, name: str) -> float:
    """A gauge's value summed over its label sets (per-model gauges: over the models); KeyError when it is missing, so
    a renamed or relabelled metric fails its reader instead of reading as a default."""
    found = [v for (n, _), v in values.items() if n == name]
    if not found:
        raise KeyError(f"{name} is not in the scrape")
    return sum(found)


def metric_sum(values: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 when there is none)."""
    return sum(v for (n, lab), v in values.items() if n == name and all(dict(lab).get(k) == want for k, want in labels.items()))


def metric_delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much `metric_sum` grew between two scrapes."""
    return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)


def histogram_mean(before: Samples, after: Samples, name: str) -> float:
    """Mean of a histogram's observations between two scrapes (NaN when there were none)."""
    count = metric_delta(before, after, f"{name}_count")
    return metric_delta(before, after, f"{name}_sum") / count if count else float("nan")

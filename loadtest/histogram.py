"""Server-side latency from the API's Prometheus histogram: scrape /metrics, subtract, take a quantile.

The API exports `denorm_api_request_duration_seconds{method,route,status}` (services/api/app.py).
Each uvicorn worker process keeps its own registry and a scrape reaches whichever process accepts
the connection, so a snapshot scrapes several times and adds up the distinct processes it saw.
A process is told apart by its counts on every route but /metrics, which do not move while no load
runs: take snapshots before and after the load, not during it.
"""

from __future__ import annotations

import itertools
import math
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

METRIC = "denorm_api_request_duration_seconds"
# The values of the labels a series is grouped by: (method, route template, status) for METRIC
SeriesKey = tuple[str, ...]
ROUTE_LABELS = ("method", "route", "status")


@dataclass(frozen=True)
class Histogram:
    """Cumulative counts by upper bound in seconds, ascending, the last bound +Inf (Prometheus' shape)."""

    buckets: tuple[tuple[float, float], ...]

    @property
    def count(self) -> float:
        return self.buckets[-1][1] if self.buckets else 0.0

    def _combine(self, other: Histogram, sign: float) -> Histogram:
        if not self.buckets:
            return Histogram(tuple((le, sign * n) for le, n in other.buckets))
        if not other.buckets:
            return self
        if [le for le, _ in self.buckets] != [le for le, _ in other.buckets]:
            raise ValueError("histograms with different buckets")
        return Histogram(tuple((le, a + sign * b) for (le, a), (_, b) in zip(self.buckets, other.buckets, strict=True)))

    def __add__(self, other: Histogram) -> Histogram:
        return self._combine(other, 1.0)

    def __sub__(self, other: Histogram) -> Histogram:
        return self._combine(other, -1.0)

    def is_valid(self) -> bool:
        """Non-negative and cumulative: what a subtraction of a later snapshot from an earlier one gives."""
        counts = [n for _, n in self.buckets]
        return all(n >= 0 for n in counts) and all(a <= b for a, b in itertools.pairwise(counts))

    def quantile(self, q: float) -> float | None:
        """Prometheus' histogram_quantile: linear within the bucket; None without observations.

        A quantile in the +Inf bucket answers the highest finite bound, as Prometheus does.
        """
        total = self.count
        if total <= 0:
            return None
        rank = q * total
        lower, below = 0.0, 0.0
        for le, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(le):
                    return lower
                if cumulative == below:
                    return le
                return lower + (le - lower) * (rank - below) / (cumulative - below)
            lower, below = le, cumulative
        return lower

    def fraction_at_most(self, bound: float) -> tuple[float, bool] | None:
        """The share of observations <= bound, and whether it is exact (bound is a bucket bound)."""
        total = self.count
        if total <= 0:
            return None
        lower, below = 0.0, 0.0
        for le, cumulative in self.buckets:
            if math.isclose(le, bound, rel_tol=1e-9):
                return cumulative / total, True
            if le > bound:
                share = below + (cumulative - below) * (bound - lower) / (le - lower) if math.isfinite(le) else below
                return share / total, False
            lower, below = le, cumulative
        return 1.0, False


def parse(text: str, metric: str = METRIC, labels: tuple[str, ...] = ROUTE_LABELS) -> dict[SeriesKey, Histogram]:
    """One histogram's series in a Prometheus text exposition, added up by the values of `labels`
    (each series of its own with the request histogram's labels; all into one with no labels)."""
    found: dict[SeriesKey, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != metric:
            continue
        for sample in family.samples:
            if sample.name != f"{metric}_bucket":
                continue
            buckets = found.setdefault(tuple(sample.labels.get(label, "") for label in labels), {})
            le = float(sample.labels["le"])
            buckets[le] = buckets.get(le, 0.0) + float(sample.value)
    return {key: Histogram(tuple(sorted(b.items()))) for key, b in found.items()}


def merge(snapshots: Iterable[Mapping[SeriesKey, Histogram]]) -> dict[SeriesKey, Histogram]:
    out: dict[SeriesKey, Histogram] = {}
    for snapshot in snapshots:
        for key, hist in snapshot.items():
            out[key] = out.get(key, Histogram(())) + hist
    return out


def subtract(after: Mapping[SeriesKey, Histogram], before: Mapping[SeriesKey, Histogram]) -> dict[SeriesKey, Histogram]:
    return {key: hist - before.get(key, Histogram(())) for key, hist in after.items()}


def fingerprint(series: Mapping[SeriesKey, Histogram]) -> tuple[tuple[SeriesKey, float], ...]:
    """What tells one API process from another between two loads: its counts, /metrics aside."""
    return tuple(sorted((key, hist.count) for key, hist in series.items() if key[1] != "/metrics"))


@dataclass(frozen=True)
class Snapshot:
    series: dict[SeriesKey, Histogram]
    processes_seen: int


def scrape(base_url: str, timeout: float = 5.0) -> str:
    # A new connection each time, so that another uvicorn worker may accept the next one.
    request = urllib.request.Request(f"{base_url.rstrip('/')}/metrics", headers={"Connection": "close"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return str(response.read().decode())


def snapshot(base_url: str, processes: int = 1, attempts_per_process: int = 20, timeout: float = 5.0) -> Snapshot:
    """The histograms of up to `processes` API processes behind base_url, added up."""
    seen: dict[tuple[tuple[SeriesKey, float], ...], dict[SeriesKey, Histogram]] = {}
    for _ in range(max(1, processes) * attempts_per_process):
        series = parse(scrape(base_url, timeout))
        seen.setdefault(fingerprint(series), series)
        if len(seen) >= processes:
            break
    return Snapshot(merge(seen.values()), len(seen))

"""The load test's gates: each request's p95 against its target (targets.toml), and no failed request.

Pure functions over plain rows, so that the locustfile's quitting listener, the runner and the tests
share them: load the targets, judge what was observed, print the table, write it as JSON.
"""

from __future__ import annotations

import fnmatch
import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtest.histogram import Histogram, SeriesKey

TARGETS_FILE = Path(__file__).with_name("targets.toml")


@dataclass(frozen=True)
class Targets:
    percentile: float
    default_ms: float
    client: tuple[tuple[str, float], ...]  # (glob over "METHOD name", ms), first match wins
    server: tuple[tuple[str, float], ...]  # (glob over "METHOD route", ms)

    def client_target(self, key: str) -> float:
        return next((ms for pattern, ms in self.client if fnmatch.fnmatchcase(key, pattern)), self.default_ms)


def load_targets(path: Path | None = None) -> Targets:
    with (path or TARGETS_FILE).open("rb") as f:
        raw = tomllib.load(f)
    percentile = float(raw.get("percentile", 0.95))
    if not 0 < percentile < 1:
        raise ValueError(f"percentile must be between 0 and 1, not {percentile}")
    return Targets(
        percentile=percentile,
        default_ms=float(raw.get("default_ms", 200)),
        client=tuple((str(k), float(v)) for k, v in raw.get("client", {}).items()),
        server=tuple((str(k), float(v)) for k, v in raw.get("server", {}).items()),
    )


@dataclass(frozen=True)
class ClientRow:
    """One Locust stats entry."""

    method: str
    name: str
    requests: int
    failures: int
    p_ms: float | None  # the target percentile, None without requests

    @property
    def key(self) -> str:
        return f"{self.method} {self.name}"


@dataclass(frozen=True)
class Verdict:
    check: str  # "client", "server" or "all"
    name: str
    requests: int
    failures: int | None
    observed_ms: float | None
    target_ms: float | None
    passed: bool
    note: str = ""


def client_verdicts(targets: Targets, rows: Iterable[ClientRow]) -> list[Verdict]:
    out = []
    for row in sorted(rows, key=lambda r: r.key):
        if row.requests == 0:
            continue  # a name seen only before the stats were reset (the catalog's first fill)
        target = targets.client_target(row.key)
        within = row.p_ms is not None and row.p_ms <= target
        note = "" if row.failures == 0 else f"{row.failures} failed"
        out.append(Verdict("client", row.key, row.requests, row.failures, row.p_ms, target,
                           within and row.failures == 0, note))  # fmt: skip
    return out


def server_verdicts(targets: Targets, series: Mapping[SeriesKey, Histogram], processes_note: str = "") -> list[Verdict]:
    """One verdict per "METHOD route" a server target names; a target nothing matched fails (unchecked)."""
    by_route: dict[str, Histogram] = {}
    for (method, route, _status), hist in series.items():
        key = f"{method} {route}"
        by_route[key] = by_route.get(key, Histogram(())) + hist
    out = []
    for pattern, target in targets.server:
        matched = sorted(k for k in by_route if fnmatch.fnmatchcase(k, pattern) and by_route[k].count > 0)
        if not matched:
            out.append(Verdict("server", pattern, 0, None, None, target, False, "no samples: not checked"))
        for key in matched:
            hist = by_route[key]
            if not hist.is_valid():
                out.append(Verdict("server", key, 0, None, None, target, False, "inconsistent scrapes: not checked"))
                continue
            observed = hist.quantile(targets.percentile)
            share = hist.fraction_at_most(target / 1000)
            assert observed is not None and share is not None  # count > 0
            fraction, exact = share
            # At a bucket bound the share of requests within the target decides exactly; elsewhere
            # only the interpolated quantile can.
            passed = fraction >= targets.percentile if exact else observed * 1000 <= target
            note = f"{fraction:.1%} within {target:g} ms" + ("" if exact else " (interpolated)")
            if processes_note:
                note += f"; {processes_note}"
            out.append(Verdict("server", key, round(hist.count), None, observed * 1000, target, passed, note))
    return out


def failure_verdict(requests: int, failures: int) -> Verdict:
    note = "no request was made" if requests == 0 else ""
    return Verdict("all", "every request", requests, failures, None, None, requests > 0 and failures == 0, note)


def passed(verdicts: Iterable[Verdict]) -> bool:
    return all(v.passed for v in verdicts)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def format_table(verdicts: list[Verdict], percentile: float) -> str:
    """The verdicts as an aligned text table, failures first so that they are seen."""
    p = f"p{percentile * 100:g}"
    header = ("where", "request", "requests", "failed", f"{p} ms", "target ms", "verdict")
    rows = [
        (v.check, v.name, f"{v.requests:,}", "-" if v.failures is None else f"{v.failures:,}", _ms(v.observed_ms),
         _ms(v.target_ms), ("pass" if v.passed else "FAIL") + (f"  {v.note}" if v.note else ""))
        for v in sorted(verdicts, key=lambda v: v.passed)
    ]  # fmt: skip
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for r in [header, *rows]:
        cells = [str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False))]
        lines.append("  ".join([*cells, str(r[-1])]))
    return "\n".join(lines)


def to_json(verdicts: list[Verdict], percentile: float) -> dict[str, Any]:
    return {"passed": passed(verdicts), "percentile": percentile, "verdicts": [asdict(v) for v in verdicts]}


def write_json(path: Path, verdicts: list[Verdict], percentile: float) -> None:
    path.write_text(json.dumps(to_json(verdicts, percentile), indent=2) + "\n", encoding="utf-8")

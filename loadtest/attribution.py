"""Where a step's time went, measured beside Locust's client-side percentiles (issue 20): so that a
failed gate says whether the time went in the generator, in the API process or in Postgres.

Over the step's steady window (from the end of spawning to the end), it takes the difference of two
snapshots, and samples in between:

- the API's histograms (its admin port's /metrics): each route's server-side p50/p95/p99, the
  upvote's phases (services/api/upvotes.py Laps), the event loop's lag (services/api/looplag.py)
  and the garbage collector's pauses;
- Postgres: the database's commits, autovacuum and autoanalyze runs and refreshes; the server's WAL
  (records, full-page images, bytes, and the time to flush it when `track_wal_io_timing` is on) and
  checkpoints, which are the whole server's, whatever else runs on it; and, every half second,
  what the database's active sessions were waiting on and which statement each was running (by its
  name in db/, `statement_name`): the shares say which statements Postgres spends its time on;
- the WAL the window wrote, by relation, with the part that was full-page images (pg_walinspect,
  when the runner could create it): which tables and indexes the WAL, and so each commit's flush,
  comes from;
- memory and the disk: the blocks the database read past shared_buffers (from the OS cache or the
  disk: pg_stat_database), and the machine's disk reads and writes, their time each, and the OS
  cache's size at both ends (/proc/diskstats and /proc/meminfo, through psutil): on a host that
  pages the OS cache out, reads past shared_buffers reach the disk and the WAL's flushes queue
  behind them (docs/performance.md, "The host pages out the OS cache");
- the CPU of the database's backends by the client that opened them (their application_name: the
  API's writers' pool, its pooled reads, its pipelined reads, the refresher): which part of the
  system Postgres's cores go to. Read from /proc at both ends of the window, so the runner must be
  on Postgres's machine (it is: it starts the server's load there) or the reading is left out.

The Locust workers' CPU is the runner's (loadtest/cpu.py)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from functools import cache, lru_cache
from typing import Any, NamedTuple

import psutil
import psycopg

from denorm.sql import positional, queries
from loadtest import histogram
from loadtest.cpu import STOLEN

SAMPLE_S = 0.5

_POSTGRES = """
SELECT d.commits, d.blocks_read, d.blocks_hit,
       w.wal_records, w.wal_fpi, w.wal_bytes, w.wal_write, w.wal_sync, w.wal_write_time, w.wal_sync_time,
       b.checkpoints_timed, b.checkpoints_req,
       (SELECT coalesce(sum(autovacuum_count), 0)::bigint FROM pg_stat_user_tables),
       (SELECT coalesce(sum(autoanalyze_count), 0)::bigint FROM pg_stat_user_tables),
       clock_timestamp()
FROM pg_stat_wal w, pg_stat_bgwriter b,
     (SELECT sum(xact_commit) AS commits, sum(blks_read)::bigint AS blocks_read, sum(blks_hit)::bigint AS blocks_hit
      FROM pg_stat_database WHERE datname = current_database()) d
"""
_WAITS = """
SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU'), query FROM pg_stat_activity
WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()
"""
_LSN = "SELECT pg_current_wal_insert_lsn()"
# This database's backends but the asker's, each with its client: the runner's CPU sampler sums
# them each second ("postgres (this database)"), the probe splits them by client.
BACKENDS = """
SELECT pid, coalesce(nullif(application_name, ''), backend_type) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
"""
# Each WAL record by the relation of its first block (a record without one: commits and the like).
_WAL_BY_RELATION = """
SELECT CASE WHEN r.rel IS NULL THEN '(no relation)'
            WHEN r.db <> (SELECT oid FROM pg_database WHERE datname = current_database()) THEN '(other databases)'
            ELSE coalesce(pg_filenode_relation(r.spc, r.rel)::regclass::text, '(dropped)') END,
       count(*), sum(r.record_length), sum(r.fpi_length)
FROM (SELECT x.record_length, x.fpi_length, m[1]::oid AS spc, m[2]::oid AS db, m[3]::oid AS rel
      FROM pg_get_wal_records_info(%s, pg_current_wal_flush_lsn()) x
      LEFT JOIN LATERAL regexp_match(x.block_ref, 'rel (\\d+)/(\\d+)/(\\d+)') AS m ON true) r
GROUP BY 1 ORDER BY sum(r.record_length) DESC
"""
_REFRESHES = """
SELECT view_name, count(*), sum(duration_ms) FROM mv_refresh_log
WHERE refresh_started_at >= %s GROUP BY 1 ORDER BY 1
"""
_NAMES = ("commits", "blocks_read", "blocks_hit", "wal_records", "wal_fpi", "wal_bytes", "wal_write", "wal_sync",
          "wal_write_ms", "wal_sync_ms", "checkpoints_timed", "checkpoints_req", "autovacuum_runs",
          "autoanalyze_runs")  # fmt: skip


def _quantiles_ms(hist: histogram.Histogram) -> dict[str, float | None]:
    def ms(q: float) -> float | None:
        value = hist.quantile(q)
        return None if value is None else round(value * 1000, 2)

    return {"count": hist.count, "p50_ms": ms(0.5), "p95_ms": ms(0.95), "p99_ms": ms(0.99)}


class StepProbe:
    """Start at the steady window's start; stop at the step's end; `result()` is the attribution."""

    def __init__(self, metrics_url: str, database_url: str) -> None:
        self.metrics_url = metrics_url
        self.database_url = database_url
        self.seen: Counter[tuple[str, str]] = Counter()  # (statement, wait): one per active session sampled
        self.samples = 0
        self._stop = threading.Event()
        self._before: tuple[str, tuple[Any, ...]] | None = None
        self._lsn: str | None = None
        self._cpu: dict[int, tuple[str, float]] | None = None
        self._disk: DiskSnapshot | None = None
        self._thread: threading.Thread | None = None

    def start_at(self, at: float) -> None:
        """Take the first snapshot at time.monotonic() == `at`, then sample until stopped."""
        self._thread = threading.Thread(target=self._run, args=(at,), name="step-probe", daemon=True)
        self._thread.start()

    def _run(self, at: float) -> None:
        if self._stop.wait(max(0.0, at - time.monotonic())):
            return
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            self._before = (histogram.scrape(self.metrics_url), self._postgres(conn))
            self._lsn = str(conn.execute(_LSN).fetchone()[0])  # type: ignore[index]
            self._cpu = backend_cpu(conn)
            self._disk = disk_snapshot()
            while not self._stop.wait(SAMPLE_S):
                self.samples += 1
                for wait, text in conn.execute(_WAITS):
                    self.seen[statement_name(str(text or "")), str(wait)] += 1

    @staticmethod
    def _postgres(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
        row = conn.execute(_POSTGRES).fetchone()
        assert row is not None
        return tuple(row)

    def stop(self) -> None:
        """Call while the API still runs: the second snapshot is taken by result()."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def result(self) -> dict[str, Any]:
        if self._before is None:
            return {"note": "the steady window never started"}
        text_before, pg_before = self._before
        text_after = histogram.scrape(self.metrics_url)
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            pg_after = self._postgres(conn)
            started = pg_before[-1]
            refreshes = {
                str(v): {"runs": int(n), "ms": int(ms or 0)} for v, n, ms in conn.execute(_REFRESHES, (started,))
            }
            wal = wal_by_relation(conn, self._lsn)
            cpu_after = backend_cpu(conn)
        disk_after = disk_snapshot()
        seconds = (pg_after[-1] - started).total_seconds()
        routes = histogram.subtract(histogram.parse(text_after), histogram.parse(text_before))
        by_route: dict[str, histogram.Histogram] = {}
        for (method, route, status), hist in routes.items():
            if route != "/metrics":
                # A request answered before routing (a 429, a 408, a client gone) has no route: its
                # status is all there is to tell what it was.
                key = f"{method} {route}" if route != "unmatched" else f"{method} unmatched {status}"
                by_route[key] = by_route.get(key, histogram.Histogram(())) + hist
        phases = histogram.subtract(
            histogram.parse(text_after, PHASES, ("phase",)), histogram.parse(text_before, PHASES, ("phase",))
        )
        lag = _total(text_after, LAG) - _total(text_before, LAG)
        gc = _total(text_after, GC) - _total(text_before, GC)
        deltas = {name: (a - b if a is not None and b is not None else None)
                  for name, a, b in zip(_NAMES, pg_after[:-1], pg_before[:-1], strict=True)}  # fmt: skip
        waits = _summed(self.seen, 1)
        total_waits = waits.total()
        return {
            "window_s": round(seconds, 1),
            "server": {k: _quantiles_ms(h) for k, h in sorted(by_route.items()) if h.count},
            "upvote_phases": {phase: _quantiles_ms(h) for (phase,), h in sorted(phases.items()) if h.count},
            "event_loop_lag": _quantiles_ms(lag),
            "gc": {**_quantiles_ms(gc), "over_25ms": _over(gc, 0.025)},
            "postgres": {
                "commits_per_s": round(float(deltas["commits"] or 0) / seconds, 1) if seconds else None,
                "blocks_read_per_s": round(float(deltas["blocks_read"] or 0) / seconds, 1) if seconds else None,
                "shared_buffers_hit_pct": _share_pct(deltas["blocks_hit"], deltas["blocks_read"]),
                "wal_mib": round(float(deltas["wal_bytes"] or 0) / 2**20, 1),
                "wal_fpi": deltas["wal_fpi"],
                "wal_by_relation": wal,
                "wal_sync_ms_each": (
                    round(float(deltas["wal_sync_ms"]) / deltas["wal_sync"], 3)
                    if deltas["wal_sync"] and deltas["wal_sync_ms"]
                    else None
                ),
                "checkpoints": (deltas["checkpoints_timed"] or 0) + (deltas["checkpoints_req"] or 0),
                "autovacuum_runs": deltas["autovacuum_runs"],
                "autoanalyze_runs": deltas["autoanalyze_runs"],
                "refreshes": refreshes,
                "active_sessions_mean": round(total_waits / self.samples, 2) if self.samples else None,
                "waits": {event: round(n / total_waits, 3) for event, n in waits.most_common(6)} if total_waits else {},
                "statements": _by_statement(self.seen, total_waits),
                "cpu_by_client": cores_by_client(self._cpu, cpu_after, seconds),
            },
            "disk": disk_rates(self._disk, disk_after, seconds) if self._disk is not None and seconds else {},
        }


def _share_pct(hits: Any, reads: Any) -> float | None:
    total = (hits or 0) + (reads or 0)
    return round(100 * float(hits or 0) / total, 2) if total else None


class DiskSnapshot(NamedTuple):
    """The machine's disks, summed (counts, bytes, milliseconds since boot), and the OS cache's bytes."""

    reads: int
    read_bytes: int
    read_ms: int
    writes: int
    write_bytes: int
    write_ms: int
    os_cache: int


def disk_snapshot() -> DiskSnapshot:
    io = psutil.disk_io_counters(perdisk=False)
    memory = psutil.virtual_memory()
    # Linux counts shared memory (shared_buffers among it) as cached; only the files' pages are meant.
    cached = max(0, int(getattr(memory, "cached", 0)) - int(getattr(memory, "shared", 0)))
    if io is None:  # no disk statistics on this machine
        return DiskSnapshot(0, 0, 0, 0, 0, 0, cached)
    return DiskSnapshot(io.read_count, io.read_bytes, io.read_time, io.write_count, io.write_bytes, io.write_time,
                        cached)  # fmt: skip


def disk_rates(before: DiskSnapshot, after: DiskSnapshot, seconds: float) -> dict[str, Any]:
    """The machine's disk over a window: reads and writes a second, MiB, ms each (the device's time
    from issue to completion, queueing included), and the OS cache's size at both ends, MiB."""
    reads, writes = after.reads - before.reads, after.writes - before.writes

    def each(ms: int, n: int) -> float | None:
        return round(ms / n, 2) if n else None

    return {
        "reads_per_s": round(reads / seconds, 1),
        "read_mib": round((after.read_bytes - before.read_bytes) / 2**20, 1),
        "read_ms_each": each(after.read_ms - before.read_ms, reads),
        "writes_per_s": round(writes / seconds, 1),
        "write_mib": round((after.write_bytes - before.write_bytes) / 2**20, 1),
        "write_ms_each": each(after.write_ms - before.write_ms, writes),
        "os_cache_mib": [before.os_cache >> 20, after.os_cache >> 20],
    }


def wal_by_relation(conn: psycopg.Connection[Any], since: str | None, top: int = 8) -> dict[str, Any]:
    """The WAL written since `since`, by relation, largest first: MiB, and MiB of full-page images.
    A note instead when it cannot be read: no pg_walinspect (the runner creates it in its database
    when its role may), no right to read the WAL, or a segment already recycled."""
    if since is None:
        return {}
    try:
        with conn.transaction():
            conn.execute("SET LOCAL statement_timeout = '60s'")
            rows = conn.execute(_WAL_BY_RELATION, (since,)).fetchall()
    except psycopg.Error as exc:  # no pg_walinspect, no right to read the WAL, or a segment recycled
        return {"note": f"not read: {type(exc).__name__}"}
    return {
        str(name): {"records": int(n), "mib": round(float(size) / 2**20, 1), "fpi_mib": round(float(fpi) / 2**20, 1)}
        for name, n, size, fpi in rows[:top]
    }


def backend_cpu(conn: psycopg.Connection[Any]) -> dict[int, tuple[str, float]]:
    """Each of the database's backends: its client (application_name) and the CPU seconds it used."""
    out = {}
    for pid, client in conn.execute(BACKENDS):
        try:
            times = psutil.Process(int(pid)).cpu_times()
        except psutil.Error:  # gone, or not on this machine's /proc
            continue
        out[int(pid)] = (str(client), times.user + times.system)
    return out


def cores_by_client(
    before: dict[int, tuple[str, float]] | None, after: dict[int, tuple[str, float]], seconds: float
) -> dict[str, float]:
    """Cores used over the window by the backends of each client, most first. A backend that ended
    within the window is not counted; one that began within it counts whole (it began after
    `before`). Empty when the backends could not be read."""
    if before is None or not after or seconds <= 0:
        return {}
    used: dict[str, float] = {}
    for pid, (client, spent) in after.items():
        was = before.get(pid)
        used[client] = used.get(client, 0.0) + spent - (was[1] if was is not None and was[0] == client else 0.0)
    return {c: round(s / seconds, 3) for c, s in sorted(used.items(), key=lambda x: -x[1]) if s > 0}


def _summed(samples: Counter[tuple[str, str]], part: int) -> Counter[str]:
    """The samples counted by one part of their key alone (0: the statement, 1: the wait)."""
    out: Counter[str] = Counter()
    for key, n in samples.items():
        out[key[part]] += n
    return out


def _by_statement(samples: Counter[tuple[str, str]], total: int, top: int = 8) -> dict[str, Any]:
    """The statements seen most, each with its share of all samples and what it waited on."""
    shares = _summed(samples, 0)
    return {
        name: {
            "share": round(n / total, 3),
            "waits": {w: round(m / n, 2) for (s, w), m in samples.most_common() if s == name and m / n >= 0.05},
        }
        for name, n in shares.most_common(top)
    }


def _squeeze(text: str) -> str:
    return " ".join(text.split())


@cache
def _statements() -> dict[str, str]:
    """Each named statement of db/ as the server shows it (placeholders numbered), to its name."""
    return {_squeeze(positional(body)[0]): name for name, body in queries().items()}


_KNOWN_BY = 120


@lru_cache(maxsize=4096)
def statement_name(text: str) -> str:
    """The name in db/ of a statement pg_stat_activity shows, or its first words when it has none
    (a statement of another client, or one the refresher builds). A statement is known by its
    beginning, at least `_KNOWN_BY` characters of it: the server shows at most
    `track_activity_query_size` bytes, and a template (the feed's `{key}`) differs after its slot."""
    seen = _squeeze(text)
    known = _statements()
    if seen in known:
        return known[seen]
    best, name = max((_common_prefix(seen, statement), name) for statement, name in known.items())
    if best >= min(len(seen), _KNOWN_BY):
        return name
    return seen[:80] or "(no text)"


def _common_prefix(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def saturation(cpu_cores: dict[str, float], machine_cores: int, workers: int, api_workers: int) -> str:
    """What ran out of CPU over the steady window, if anything: the first thing to read when a gate
    failed. A process is saturated at 85% of the cores it can use (one per process: the API's
    uvicorn workers and the Locust workers are single-threaded), the machine at 90% of its own."""
    machine, stolen = cpu_cores.get("machine", 0.0), cpu_cores.get(STOLEN, 0.0)
    if machine + stolen >= 0.9 * machine_cores:
        top = ", ".join(f"{k} {v:.2f}" for k, v in sorted(cpu_cores.items(), key=lambda kv: -kv[1])
                        if k not in ("machine", STOLEN))  # fmt: skip
        busy = f"{machine:.2f}" + (f" (and {stolen:.2f} taken by the hypervisor)" if stolen >= 0.01 else "")
        return (f"the machine: {busy} of its {machine_cores} cores busy, so every process waited for a core "
                f"and every time above includes that wait ({top})")  # fmt: skip
    if cpu_cores.get("locust workers", 0.0) >= 0.85 * workers:
        return "the load generator: its client-side times include its own queueing"
    if cpu_cores.get("api", 0.0) >= 0.85 * api_workers:
        return "the API process(es): more API workers or replicas"
    return f"nothing ({machine:.2f} of {machine_cores} cores): the tail is stalls, not a lack of CPU"


LAG = "denorm_api_event_loop_lag_seconds"
GC = "denorm_api_gc_pause_seconds"
PHASES = "denorm_api_upvote_phase_seconds"


def _total(text: str, metric: str) -> histogram.Histogram:
    """Every series of a histogram added into one, whatever its labels (the GC's generations)."""
    return histogram.parse(text, metric, ()).get((), histogram.Histogram(()))


def _over(hist: histogram.Histogram, bound: float) -> float | None:
    if hist.count == 0:
        return 0.0
    below = hist.fraction_at_most(bound)
    return None if below is None else round(hist.count * (1 - below[0]), 1)

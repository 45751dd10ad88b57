"""`denorm loadtest`: the system on a seeded dataset, the Locust suite headless, the gates, the plot.

    denorm loadtest [--scale small] [--users 300 | --steps 500,1000,2000,5000] [--run-time 60]
                    [--warm-up 30] [--workers N] [--api-workers 1] [--reuse] [--out DIR]

Each step (a number of users) is one Locust run: a master and --workers workers spawn the users at
--spawn-rate, the load goes on --warm-up seconds unmeasured, then --run-time seconds of steady load
follow, and only those count (the stats restart after the warm-up).
The API restarts before each step, so that its /metrics histogram (the upvote's server time) holds
that step alone; the refresher runs throughout. Results go to --out (loadtest/results/<UTC time>/):
per step the Locust CSVs, its HTML report, the gates' verdicts, CPU by component (cpu.csv), every
log and, with --profile, a py-spy flame graph of the API (api-profile.svg); at the top plot.png,
summary.json and summary.txt.

Exit status: 0 every gate of every step held; 1 a gate failed or a request failed; 2 the system
could not be prepared or started.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql

from denorm.config import get_settings
from denorm.logs import get_logger
from loadtest import gates, report
from loadtest.attribution import BACKENDS, StepProbe, saturation
from loadtest.calibrate import describe, machine_speed
from loadtest.localproc import free_port, wait_ready
from loadtest.plot import plot
from loadtest.report import HistoryPoint, StepResult

log = get_logger("denorm.loadtest")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LOCUSTFILE = HERE / "locustfile.py"
RESULTS = HERE / "results"
SCALE_NAMES = ("tiny", "small", "standard", "large")
_DENORM = Path(sys.executable).with_name("denorm")
DENORM: tuple[str, ...] = (str(_DENORM),) if _DENORM.is_file() else (sys.executable, "-m", "denorm.cli")
LOCUST: tuple[str, ...] = (sys.executable, "-m", "locust")


@dataclass(frozen=True)
class Options:
    database_url: str
    out: Path
    scale: str = "small"
    seed: int = 42
    reuse: bool = False
    steps: tuple[int, ...] = (300,)
    spawn_rate: float | None = None
    run_time: int = 60
    # Load after spawning, before the measured window: a ramp at 100 users a second outruns this
    # machine, and the backlog it leaves took about 20 s to drain at 5000 users (docs/performance.md).
    warm_up: int = 30
    workers: int = 2
    api_workers: int = 1
    think_scale: float = 1.0
    targets: Path | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "loadtest:"
    jwt_secret: str = ""
    environment: str = "development"
    goal_users: int = 5000
    profile: bool = False
    # The generator's CPU priority (nice(2)): on one machine it yields the cores to the system under
    # test, as it would run elsewhere in production (docs/performance.md, "The generator yields").
    generator_nice: int = 10

    def rate(self, users: int) -> float:
        # A ramp of about ten seconds; Locust itself warns above 100 users a second.
        return self.spawn_rate or min(100.0, max(1.0, users / 10))

    def ramp_seconds(self, users: int) -> int:
        return math.ceil(users / self.rate(users))


# --- the database ----------------------------------------------------------------------------


def _marker(opts: Options) -> str:
    return f"denorm loadtest dataset: scale={opts.scale} seed={opts.seed}"


def prepare_database(opts: Options) -> None:
    """Created, migrated, seeded (unless --reuse finds this very dataset), every view refreshed."""
    from denorm.maintenance import drain
    from denorm.migrate import ensure_database, migrate
    from denorm.seed import SCALES, seed

    if ensure_database(opts.database_url):
        log.info("created the database")
    migrate(opts.database_url, echo=lambda message: log.info("migrate", message=message))
    with psycopg.connect(opts.database_url, autocommit=True) as conn:
        name = conn.info.dbname
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        comment = sql.SQL("COMMENT ON DATABASE {} IS {}")
        if opts.reuse and row is not None and row[0] == _marker(opts):
            log.info("reusing the seeded database", database=name, scale=opts.scale, seed=opts.seed)
        else:
            # Unmarked while seeding: an interrupted seed must not be reused.
            conn.execute(comment.format(sql.Identifier(name), sql.Literal(None)))
            log.info("seeding", database=name, scale=opts.scale, seed=opts.seed)
            seed(opts.database_url, SCALES[opts.scale], seed=opts.seed)
            _forget_redis_sets(opts)
            conn.execute(comment.format(sql.Identifier(name), sql.Literal(_marker(opts))))
        refreshed = drain(conn, worker="loadtest")
        log.info("views refreshed", views=len(refreshed))
        try:  # for each step's WAL by relation (loadtest/attribution.py); it needs a superuser
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        except psycopg.Error as exc:
            log.info("no WAL by relation", reason=str(exc).strip())


def settle(opts: Options, users: int) -> dict[str, Any]:
    """Before each step, the same starting point: the steady state below, and how fast the machine
    is. Each step, not only the first: a step's writes leave dead rows and dirty pages, and with
    autovacuum off (as on this project's CI machines' servers) a later step would otherwise start
    from what the earlier ones left."""
    with psycopg.connect(opts.database_url, autocommit=True) as conn:
        conditions = steady_state(conn)
    conditions["machine"] = machine = machine_speed(opts.database_url)
    log.info("machine speed before the load", users=users, **machine)
    print(describe(machine), flush=True)
    print(f"warm-up: {opts.warm_up} s of load after spawning, before the measured window", flush=True)
    return conditions | {"users": users, "warm_up_s": opts.warm_up}


def steady_state(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Bring the database to where a production one would be before the load (issue 20): the
    seed's or the last run's dead rows vacuumed, statistics fresh, dirty pages checkpointed (so that
    the run does not pay for the seed's writes), every view fresh; and say so."""
    from denorm.maintenance import drain

    conn.execute("VACUUM (ANALYZE)")
    try:
        conn.execute("CHECKPOINT")
        checkpointed = True
    except psycopg.errors.InsufficientPrivilege:  # a role without pg_checkpoint: said, not fatal
        checkpointed = False
    drain(conn, worker="loadtest")  # anything requested meanwhile: every view fresh
    memory = warm(conn)
    row = conn.execute(
        "SELECT (SELECT coalesce(sum(n_dead_tup), 0)::bigint FROM pg_stat_user_tables), "
        "current_setting('autovacuum'), current_setting('synchronous_commit'), current_setting('shared_buffers'), "
        "current_setting('max_wal_size'), current_setting('wal_compression'), current_setting('track_wal_io_timing'), "
        "(SELECT count(*) FROM mv_refresh_queue WHERE status <> 'idle')"
    ).fetchone()
    assert row is not None
    conditions = dict(zip(("dead_rows", "autovacuum", "synchronous_commit", "shared_buffers", "max_wal_size",
                           "wal_compression", "track_wal_io_timing", "views_pending"), row, strict=True))  # fmt: skip
    conditions["checkpointed"] = checkpointed
    conditions |= memory
    log.info("steady state before the load", **conditions)
    print("before the load: vacuumed and analyzed, " + ("checkpointed, " if checkpointed else "NOT checkpointed, ")
          + ", ".join(f"{k} {v}" for k, v in conditions.items() if k != "checkpointed"), flush=True)  # fmt: skip
    if memory["shared_buffers_hold_pct"] < 100:
        held = memory["shared_buffers_hold_pct"]
        print(f"warning: shared_buffers holds {held}% of the database: reads past it come from the OS cache, "
              "which some machines page out within seconds (this project's: docs/performance.md, 'The host "
              "pages out the OS cache'), and then wait on the disk", flush=True)  # fmt: skip
    return conditions


def warm(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """The database's pages in memory, as on a server that has been serving it for a while. A
    database just seeded, or a server just restarted, has them in the OS cache at best, and some
    hosts page the OS cache out within seconds of a page's last use (this project's machines do:
    docs/performance.md): reads then wait on the disk, and every WAL flush waits behind them. So
    every relation is read into shared_buffers when the database fits there (pg_prewarm), else into
    the OS cache, and the run says how much of the database shared_buffers can hold."""
    from loadtest.prewarm import prewarm

    row = conn.execute(
        "SELECT pg_database_size(current_database()), pg_size_bytes(current_setting('shared_buffers'))"
    ).fetchone()
    assert row is not None
    database, buffers = int(row[0]), int(row[1])
    fits = database <= buffers
    log.info("prewarming", database_mib=database >> 20, into="shared_buffers" if fits else "the OS cache")
    try:
        prewarm(conn, "buffer" if fits else "read")
        prewarmed = "into shared_buffers" if fits else "into the OS cache only"
    except psycopg.Error as exc:  # not installed, or not a superuser: said, not fatal
        prewarmed = f"no ({str(exc).strip().splitlines()[0]})"
    return {"database_mib": database >> 20, "shared_buffers_hold_pct": min(100, 100 * buffers // max(database, 1)),
            "prewarmed": prewarmed}  # fmt: skip


def _forget_redis_sets(opts: Options) -> None:
    """Upvote sets cached for the previous dataset of this database would now be wrong."""
    import redis

    client = redis.Redis.from_url(opts.redis_url)
    try:
        pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in opts.redis_prefix) + "*"
        keys = list(client.scan_iter(match=pattern, count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
        log.info("cleared cached upvote sets", keys=len(keys), prefix=opts.redis_prefix)
    finally:
        client.close()


# --- processes -------------------------------------------------------------------------------


def start(name: str, cmd: list[str], env: dict[str, str], log_path: Path, nice: int = 0) -> subprocess.Popen[bytes]:
    """`cmd` in the background, its output to `log_path`, `nice` added to its CPU niceness (by
    nice(1), which execs it under the same pid: not preexec_fn, unsafe while the runner's probe
    threads run)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = ["nice", "-n", str(nice), *cmd] if nice else cmd
    with log_path.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO)
    log.info("started", process=name, pid=proc.pid, log=str(log_path), nice=nice)
    return proc


def stop(name: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGTERM, then SIGKILL after `timeout`; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("killing", process=name, pid=proc.pid)
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def service_env(opts: Options) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_READ_URL"}
    env.update({
        "DATABASE_URL": opts.database_url,
        "REDIS_URL": opts.redis_url,
        "REDIS_KEY_PREFIX": opts.redis_prefix,
        "JWT_SECRET": opts.jwt_secret,
        "ENVIRONMENT": opts.environment,
        # One log line per request would cost the API CPU the load test is measuring.
        "API_ACCESS_LOG": "false",
        "REFRESHER_METRICS_PORT": "0",  # no fixed port to collide with another system on this machine
        # Every simulated user comes from this machine's address: the per-address limits would count
        # them all as one client. (The per-token ones stay: a user writes a few times a minute.)
        "API_RATE_WRITES_PER_ADDRESS": "1000000/second",
        "API_RATE_SEARCH_MISSES_PER_ADDRESS": "1000000/second",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    })  # fmt: skip
    return env


# --- one step --------------------------------------------------------------------------------


def run_step(opts: Options, users: int, step_dir: Path, base_url: str, metrics_url: str,
             api: subprocess.Popen[bytes], refresher: subprocess.Popen[bytes]) -> StepResult:  # fmt: skip
    from denorm.seed import SCALES
    from loadtest.cpu import Component, CpuSampler  # psutil: only when a step runs

    port = free_port()
    ramp = opts.ramp_seconds(users)
    env = service_env(opts) | {
        "LOADTEST_USER_IDS": f"1-{SCALES[opts.scale].users}",
        "LOADTEST_THINK_SCALE": str(opts.think_scale),
        "LOADTEST_GATES_JSON": str(step_dir / "gates.json"),
        "LOADTEST_API_PROCESSES": str(opts.api_workers),
        "LOADTEST_METRICS_URL": metrics_url,
        "LOADTEST_WARM_UP_S": str(opts.warm_up),
    }
    if opts.targets is not None:
        env["LOADTEST_TARGETS"] = str(opts.targets.resolve())
    common = ["-f", str(LOCUSTFILE), "--reset-stats", "--loglevel", "INFO"]
    master_cmd = [
        *LOCUST, *common, "--master", "--headless", "--only-summary",
        "--master-bind-host=127.0.0.1", f"--master-bind-port={port}",
        f"--expect-workers={opts.workers}", "--expect-workers-max-wait=60",
        f"--users={users}", f"--spawn-rate={opts.rate(users):g}", f"--run-time={ramp + opts.warm_up + opts.run_time}s",
        "--stop-timeout=10", f"--host={base_url}",
        f"--csv={step_dir / 'locust'}", "--csv-full-history", f"--html={step_dir / 'report.html'}",
    ]  # fmt: skip
    worker_cmd = [*LOCUST, *common, "--worker", "--master-host=127.0.0.1", f"--master-port={port}"]

    origin = time.monotonic()
    steady_from = origin + ramp + opts.warm_up + 5  # after spawning, the warm-up and Locust's start-up
    probe = StepProbe(metrics_url, opts.database_url)
    probe.start_at(steady_from)  # the measured window, as the CPU figures take it
    master = start("locust master", master_cmd, env, step_dir / "locust-master.log", opts.generator_nice)
    workers = [start(f"locust worker {i}", worker_cmd, env, step_dir / f"locust-worker-{i}.log", opts.generator_nice)
               for i in range(opts.workers)]  # fmt: skip
    conn = psycopg.connect(opts.database_url, autocommit=True)
    sampler = CpuSampler({
        "api": Component(lambda: [api.pid]),
        "refresher": Component(lambda: [refresher.pid]),
        "locust master": Component(lambda: [master.pid], children=False),
        "locust workers": Component(lambda: [w.pid for w in workers], children=False),
        "postgres (this database)": Component(lambda: [int(r[0]) for r in conn.execute(BACKENDS)], children=False),
    }).start()  # fmt: skip
    log.info("step started", users=users, spawn_rate=opts.rate(users), ramp_s=ramp, run_time_s=opts.run_time,
             workers=opts.workers)  # fmt: skip
    profiler = None
    try:
        if opts.profile:
            profiler = _profile_api(api, master, step_dir / "api-profile.svg", steady_from, opts.run_time - 10)
        try:
            code = master.wait(timeout=ramp + opts.warm_up + opts.run_time + 120)
        except subprocess.TimeoutExpired:
            log.error("the Locust master did not finish in time", users=users)
            code = stop("locust master", master)
    finally:
        if profiler is not None:
            try:
                profiler.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop("py-spy", profiler)
        for i, w in enumerate(workers):
            try:
                w.wait(timeout=30)  # a worker quits when its master tells it to
            except subprocess.TimeoutExpired:
                stop(f"locust worker {i}", w)
        sampler.stop()
        probe.stop()
        conn.close()
    sampler.write_csv(step_dir / "cpu.csv", origin)
    steady = sampler.means(since=steady_from)

    verdicts = _read_gates(step_dir / "gates.json")
    if verdicts is not None:
        print(f"\n{users} users: gates {'hold' if verdicts['passed'] else 'FAILED'}\n"
              f"{gates.format_table([gates.Verdict(**v) for v in verdicts['verdicts']], verdicts['percentile'])}\n",
              flush=True)  # fmt: skip
    agg = report.aggregate(step_dir / "locust_stats.csv")
    try:
        attribution = probe.result()  # the API still runs: the caller stops it
    except (OSError, ValueError, psycopg.Error) as exc:
        log.error("could not attribute the step's time", error=repr(exc))
        attribution = {"note": f"not measured: {exc!r}"}
    attribution["cpu_saturated"] = saturation(steady, psutil.cpu_count() or 1, opts.workers, opts.api_workers)
    return StepResult(users=users, gates_passed=None if verdicts is None else bool(verdicts["passed"]),
                      exit_code=code, cpu_cores=steady, attribution=attribution, **agg)  # fmt: skip


def _profile_api(api: subprocess.Popen[bytes], master: subprocess.Popen[bytes], svg: Path, at: float,
                 seconds: int) -> subprocess.Popen[bytes] | None:  # fmt: skip
    """py-spy on the API (and its uvicorn workers) during the steady load: a flame graph of its CPU."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.is_file():
        log.warning("no py-spy next to this Python: not profiling")
        return None
    while time.monotonic() < at and master.poll() is None:
        time.sleep(0.5)
    if master.poll() is not None:
        return None
    cmd = [str(spy), "record", "--pid", str(api.pid), "--subprocesses", "--nonblocking", "--rate", "100",
           "--duration", str(max(5, seconds)), "--format", "flamegraph", "--output", str(svg)]  # fmt: skip
    return start("py-spy", cmd, os.environ.copy(), svg.with_suffix(".log"))


def _read_gates(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data
    except (OSError, ValueError):
        return None


# --- the whole run ---------------------------------------------------------------------------


def _raise_open_files_limit() -> None:
    """Every simulated user holds a connection, open in a Locust worker and in the API: thousands of
    descriptors, past a default soft limit of 1024. The children inherit the raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def run(opts: Options) -> int:
    opts.out.mkdir(parents=True, exist_ok=True)
    _raise_open_files_limit()
    log.info("load test", out=str(opts.out), scale=opts.scale, steps=list(opts.steps), run_time_s=opts.run_time)
    try:
        targets = gates.load_targets(opts.targets)  # a bad targets file should fail now, not after the run
    except (OSError, ValueError) as exc:
        log.error("cannot read the targets", path=str(opts.targets or gates.TARGETS_FILE), error=str(exc))
        return 2
    try:
        prepare_database(opts)
    except Exception as exc:
        log.exception("could not prepare the database", error=str(exc))
        return 2
    env = service_env(opts)
    results: list[StepResult] = []
    befores: list[dict[str, Any]] = []
    refresher = start("refresher", [*DENORM, "refresher"], env, opts.out / "refresher.log")
    try:
        for users in opts.steps:
            try:
                befores.append(settle(opts, users))
            except psycopg.Error as exc:
                log.exception("could not settle the database before the step", users=users, error=str(exc))
                return 2
            step_dir = opts.out / f"users-{users:05d}"
            port, admin_port = free_port(), free_port()
            base_url, metrics_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
            api_cmd = [*DENORM, "api", "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin_port),
                       "--workers", str(opts.api_workers)]  # fmt: skip
            api = start("api", api_cmd, env, step_dir / "api.log")
            try:
                wait_ready(base_url, api)
                result = run_step(opts, users, step_dir, base_url, metrics_url, api, refresher)
            except RuntimeError as exc:
                log.error("the system did not start", users=users, error=str(exc))
                return 2
            finally:
                stop("api", api)
            results.append(result)
            log.info("step done", **asdict(result), passed=result.passed)
    finally:
        stop("refresher", refresher)

    points = [p for users in opts.steps for p in _history(opts.out / f"users-{users:05d}")]
    title = (f"denorm loadtest: {opts.scale} dataset, {opts.workers} Locust workers, {opts.api_workers} API "
             f"process(es), think time x{opts.think_scale:g}, {opts.run_time} s per step")  # fmt: skip
    plot(results, points, targets.default_ms, opts.out / "plot.png", title, psutil.cpu_count())
    summary = summarize(opts, results) | {"before_each_step": befores}
    (opts.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    speeds = [f"before {b['users']} users: {describe(b['machine'])}" for b in befores]
    text = "\n".join([summary_table(results, opts.goal_users), *speeds])
    (opts.out / "summary.txt").write_text(text + "\n", encoding="utf-8")
    print(f"\n{text}\nresults: {opts.out}\n", flush=True)
    return 0 if results and all(r.passed for r in results) else 1


def _history(step_dir: Path) -> list[HistoryPoint]:
    path = step_dir / "locust_stats_history.csv"
    return report.history(path) if path.exists() else []


def largest_passing(results: list[StepResult]) -> int | None:
    """The most users at which every gate held, counting only steps below the first failure."""
    best = None
    for r in sorted(results, key=lambda r: r.users):
        if not r.passed:
            break
        best = r.users
    return best


def summarize(opts: Options, results: list[StepResult]) -> dict[str, Any]:
    best = largest_passing(results)
    return {
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()
                    if k not in ("jwt_secret", "database_url")},
        "steps": [asdict(r) | {"passed": r.passed} for r in results],
        "largest_passing_users": best,
        "finished_at": datetime.now(UTC).isoformat(),
    }  # fmt: skip


def summary_table(results: list[StepResult], goal_users: int) -> str:
    header = f"{'users':>6} {'requests':>9} {'failed':>7} {'req/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}  gates"
    lines = [header]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}"

    for r in results:
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r.cpu_cores.items(), key=lambda kv: -kv[1]))
        lines.append(f"{r.users:>6} {r.requests:>9,} {r.failures:>7,} {r.rps:>8,.1f} {ms(r.p50_ms):>7} "
                     f"{ms(r.p95_ms):>7} {ms(r.p99_ms):>7}  {'hold' if r.passed else 'FAIL'}  cpu: {cpu}")  # fmt: skip
    for r in results:
        lines += where_the_time_went(r)
    best = largest_passing(results)
    lines.append(f"largest number of users at which every gate held: {best if best is not None else 'none'}")
    failed_above = any(not r.passed and r.users > (best or 0) for r in results)
    if best and failed_above and best < goal_users:
        # Only an estimate when the part that saturated is the API; the cpu column says which did.
        lines.append(f"if the API is what saturated and scales out linearly, {goal_users} users need "
                     f"{math.ceil(goal_users / best)} API processes like this one")  # fmt: skip
    elif results and not failed_above and max(r.users for r in results) < goal_users:
        lines.append(f"every step held; {goal_users} users were not tried")
    return "\n".join(lines)


def where_the_time_went(r: StepResult) -> list[str]:
    """The step's attribution in a few lines: the slowest routes at the server, the API process's
    stalls, Postgres's side, the generator's CPU."""
    a = r.attribution
    if not a or "server" not in a:
        return [f"{r.users:>6} users: {a.get('note', 'no attribution')}"]

    def ms(q: dict[str, Any], key: str = "p99_ms") -> str:
        return "-" if q.get(key) is None else f"{q[key]:g}"

    slowest = sorted(a["server"].items(), key=lambda kv: -(kv[1]["p95_ms"] or 0))[:5]
    routes = "; ".join(f"{name} p50 {ms(q, 'p50_ms')} p95 {ms(q, 'p95_ms')} p99 {ms(q)}" for name, q in slowest)
    pg, lag = a["postgres"], a["event_loop_lag"]
    waits = ", ".join(f"{event} {share:.0%}" for event, share in pg["waits"].items()) or "none sampled"
    refreshes = ", ".join(f"{v} x{x['runs']} ({x['ms']} ms)" for v, x in pg["refreshes"].items()) or "none"
    statements = (
        "; ".join(
            f"{name} {x['share']:.0%} (" + ", ".join(f"{w} {f:.0%}" for w, f in x["waits"].items()) + ")"
            for name, x in pg.get("statements", {}).items()
        )
        or "none"
    )
    wal = pg.get("wal_by_relation", {})
    wal_text = wal.get("note") or ", ".join(f"{n} {x['mib']:g} ({x['fpi_mib']:g})" for n, x in wal.items()) or "none"
    clients = ", ".join(f"{c} {cores:g}" for c, cores in pg.get("cpu_by_client", {}).items()) or "not read"
    upvote = a.get("upvote_phases", {})
    phases = "; ".join(f"{p} p50 {ms(q, 'p50_ms')} p95 {ms(q, 'p95_ms')} p99 {ms(q)}" for p, q in upvote.items())
    return [
        f"{r.users:>6} users, where the time went (steady {a['window_s']} s):",
        f"         server, slowest p95: {routes}",
        f"         upvote phases (ms): {phases or 'none'}",
        f"         API process: event-loop lag p50 {ms(lag, 'p50_ms')} p99 {ms(lag)} ms; "
        f"GC pauses {a['gc']['count']:.0f}, p99 {ms(a['gc'])} ms, over 25 ms {a['gc']['over_25ms']}",
        f"         postgres: {pg['commits_per_s']} commits/s, server WAL {pg['wal_mib']} MiB "
        f"({pg['wal_fpi']} full pages), "
        f"flush {pg['wal_sync_ms_each'] if pg['wal_sync_ms_each'] is not None else 'untimed'} ms each, "
        f"{pg['checkpoints']} checkpoints, autovacuum {pg['autovacuum_runs']}, autoanalyze {pg['autoanalyze_runs']}; "
        f"refreshes {refreshes}",
        f"         postgres WAL by relation, MiB (of which full-page images): {wal_text}",
        f"         memory: postgres read {pg.get('blocks_read_per_s')} blocks/s past shared_buffers "
        f"(hits {pg.get('shared_buffers_hit_pct')}%); {_disk_text(a.get('disk', {}))}",
        f"         postgres active sessions {pg['active_sessions_mean']} on average, waiting on: {waits}",
        f"         postgres active sessions were running: {statements}",
        f"         postgres CPU by client (cores): {clients}",
        f"         generator: locust workers {r.cpu_cores.get('locust workers', 0):.2f} cores",
        f"         out of CPU: {a.get('cpu_saturated', 'not judged')}",
    ]  # fmt: skip


def _disk_text(d: dict[str, Any]) -> str:
    if not d:
        return "machine disk not read"
    cache = d["os_cache_mib"]
    return (f"machine disk {d['reads_per_s']} reads/s ({d['read_ms_each']} ms each, {d['read_mib']} MiB), "
            f"{d['writes_per_s']} writes/s ({d['write_ms_each']} ms each, {d['write_mib']} MiB); "
            f"OS cache {cache[0]:,} -> {cache[1]:,} MiB")  # fmt: skip


# --- the command line ------------------------------------------------------------------------


def _positive_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from exc
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("user counts must be positive")
    return tuple(sorted(set(values)))


def _seconds(text: str, least: int = 1) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        value = int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    except (ValueError, IndexError) as exc:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (60, 90s, 2m)") from exc
    if value < least:
        raise argparse.ArgumentTypeError(f"the duration must be at least {least} s")
    return value


def _seconds_or_zero(text: str) -> int:
    return _seconds(text, least=0)


HELP = "run the Locust suite against a seeded system; gates, CSV, HTML, plot"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="denorm loadtest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--scale", choices=SCALE_NAMES, default="small", help="the dataset (small)")
    p.add_argument("--seed", type=int, default=42, help="the dataset's seed (42)")
    p.add_argument("--database", help="database name, on DATABASE_URL's server (denorm_loadtest_<scale>)")
    p.add_argument("--database-url", help="the database's whole URL, instead of --database")
    p.add_argument("--reuse", action="store_true", help="do not re-seed a database that holds this scale and seed")
    users = p.add_mutually_exclusive_group()
    users.add_argument("--users", type=int, default=300, help="simulated users (300)")
    users.add_argument("--steps", type=_positive_ints, help="several user counts, one run each: 500,1000,2000,5000")
    p.add_argument("--spawn-rate", type=float, help="users started per second (users/10, at most 100)")
    p.add_argument("--run-time", type=_seconds, default=60, help="measured load per step (60, 90s, 2m)")
    p.add_argument("--warm-up", type=_seconds_or_zero, default=30, help="load after spawning, not measured (30)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Locust workers (one per core)")
    p.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes of the API (1)")
    p.add_argument("--think-scale", type=float, default=1.0, help="multiply the suite's think times (1)")
    p.add_argument("--targets", type=Path, help="a targets file instead of loadtest/targets.toml")
    p.add_argument("--out", type=Path, help="results folder (loadtest/results/<UTC time>)")
    p.add_argument("--redis-prefix", help="Redis key prefix of the API under test (loadtest:<database>:)")
    p.add_argument("--goal-users", type=int, default=5000, help="the user count the summary sizes against (5000)")
    p.add_argument("--profile", action="store_true", help="py-spy the API during each step's steady load (SVG)")
    p.add_argument(
        "--generator-nice",
        type=int,
        default=10,
        choices=range(20),
        metavar="0-19",
        help="the Locust processes' niceness: the system under test comes first for the CPU (10)",
    )
    return p


def options_from_args(args: argparse.Namespace) -> Options:
    settings = get_settings()
    if args.database_url:
        url = args.database_url
    else:
        url = psycopg.conninfo.make_conninfo(
            settings.database_url, dbname=args.database or f"denorm_loadtest_{args.scale}"
        )
    dbname = psycopg.conninfo.conninfo_to_dict(url).get("dbname") or "denorm"
    out = args.out or RESULTS / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    if args.workers < 1 or args.api_workers < 1 or args.users < 1 or args.think_scale <= 0:
        raise SystemExit("loadtest: --workers, --api-workers and --users must be positive, --think-scale above 0")
    return Options(
        database_url=url,
        out=out,
        scale=args.scale,
        seed=args.seed,
        reuse=args.reuse,
        steps=args.steps or (args.users,),
        spawn_rate=args.spawn_rate,
        run_time=args.run_time,
        warm_up=args.warm_up,
        workers=args.workers,
        api_workers=args.api_workers,
        think_scale=args.think_scale,
        targets=args.targets,
        redis_url=settings.redis_url,
        redis_prefix=args.redis_prefix or f"loadtest:{dbname}:",
        jwt_secret=settings.jwt_secret,
        # The runner starts its own local system: development unless ENVIRONMENT says otherwise
        # (unset means production for the services themselves).
        environment=os.environ.get("ENVIRONMENT", "development"),
        goal_users=args.goal_users,
        profile=args.profile,
        generator_nice=args.generator_nice,
    )


def main(argv: list[str]) -> int:
    """`denorm loadtest ARGS`: the CLI hands its arguments over (denorm/cli.py)."""
    return run(options_from_args(build_parser().parse_args(argv)))

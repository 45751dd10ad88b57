"""The load test's picture: latency percentiles, throughput and CPU against the number of users (PNG, Agg).

Large markers joined by lines are the steps (the steady load after spawning); small faint dots are
Locust's 10-second windows, ramps included, which fill in the curve between and within steps.
Dotted squares are measured inside the API process (the slowest route's server p95, the event
loop's lag): a client-side tail well above them went in the generator or the network. The bottom
panel is each step's CPU by component, with the machine's cores as a ceiling: a machine near it
puts every request behind others in its run queue, whatever the code.
"""

from __future__ import annotations

from pathlib import Path

from loadtest.report import HistoryPoint, StepResult

# The bottom panel's components (loadtest/run.py's CPU sampler names), in drawing order.
CPU_LINES = {"machine": "black", "postgres (this database)": "tab:blue", "api": "tab:red",
             "locust workers": "tab:grey", "refresher": "tab:olive"}  # fmt: skip


def plot(
    steps: list[StepResult],
    points: list[HistoryPoint],
    default_target_ms: float,
    path: Path,
    title: str,
    cores: int | None = None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: the runner may run anywhere
    import matplotlib.pyplot as plt

    fig, (latency, throughput, cpu) = plt.subplots(3, 1, sharex=True, figsize=(9, 10), height_ratios=[3, 2, 2])
    colors = {"p50": "tab:green", "p95": "tab:orange", "p99": "tab:red"}
    for label, attr in (("p50", "p50_ms"), ("p95", "p95_ms"), ("p99", "p99_ms")):
        dots = [(p.users, getattr(p, attr)) for p in points if getattr(p, attr)]
        if dots:
            latency.scatter(*zip(*dots, strict=True), s=8, alpha=0.25, color=colors[label])
        line = [(s.users, getattr(s, attr)) for s in steps if getattr(s, attr)]
        if line:
            latency.plot(*zip(*line, strict=True), marker="o", color=colors[label], label=f"{label} (step)")
    # Where the time went (loadtest/attribution.py): inside the API process, per step.
    for label, color, value in (
        ("slowest route's p95 at the server", "tab:purple", _slowest_route_p95),
        ("event-loop lag p99", "tab:brown", _loop_lag_p99),
    ):
        inside = [(s.users, v) for s in steps if (v := value(s))]
        if inside:
            latency.plot(*zip(*inside, strict=True), marker="s", linestyle=":", color=color, label=label)
    failed = [(s.users, s.p95_ms) for s in steps if not s.passed and s.p95_ms]
    if failed:
        latency.scatter(*zip(*failed, strict=True), marker="x", s=120, color="black", zorder=5, label="a gate failed")
    latency.axhline(default_target_ms, linestyle="--", color="grey", label=f"{default_target_ms:g} ms (default target)")
    latency.set_yscale("log")
    latency.set_ylabel("response time, ms (log)")
    latency.legend(loc="upper left", fontsize="small")
    latency.grid(True, which="both", alpha=0.3)

    dots = [(p.users, p.rps) for p in points]
    if dots:
        throughput.scatter(*zip(*dots, strict=True), s=8, alpha=0.25, color="tab:blue")
    line = [(s.users, s.rps) for s in steps]
    if line:
        throughput.plot(*zip(*line, strict=True), marker="o", color="tab:blue", label="requests/s (step)")
        throughput.legend(loc="upper left", fontsize="small")
    throughput.set_ylim(bottom=0)
    throughput.set_ylabel("requests/s")
    throughput.grid(True, alpha=0.3)

    for name, color in CPU_LINES.items():
        used = [(s.users, s.cpu_cores[name]) for s in steps if name in s.cpu_cores]
        if used:
            cpu.plot(*zip(*used, strict=True), marker="o", color=color, label=name)
    if cores:
        cpu.axhline(cores, linestyle="--", color="grey", label=f"{cores} cores")
    cpu.set_ylim(bottom=0)
    cpu.set_ylabel("CPU, cores")
    cpu.set_xlabel("users")
    cpu.legend(loc="upper left", fontsize="small")
    cpu.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _slowest_route_p95(step: StepResult) -> float | None:
    return max((q["p95_ms"] or 0.0 for q in step.attribution.get("server", {}).values()), default=None)


def _loop_lag_p99(step: StepResult) -> float | None:
    value = step.attribution.get("event_loop_lag", {}).get("p99_ms")
    return None if value is None else float(value)

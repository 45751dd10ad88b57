"""CPU used by each part of the system while a step runs, in cores: what saturates first on this machine.

Sampled once a second from /proc through psutil: the API (its uvicorn workers are children), the
refresher, the Locust master, the Locust workers, the Postgres backends serving the load test's
database, the whole machine (which includes anything else running on it), and the time the
hypervisor gave this machine's virtual cores to others ("stolen"): on a shared host the same load
can cost a different share of the cores from one run to the next, and steal is the part of that
the guest can see.
"""

from __future__ import annotations

import csv
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# component -> the pids to count now (children are added when asked for)
PidSource = Callable[[], list[int]]
STOLEN = "stolen"  # not a component: cores the hypervisor ran something else on


@dataclass
class Component:
    pids: PidSource
    children: bool = True


@dataclass
class CpuSampler:
    components: Mapping[str, Component]
    interval: float = 1.0
    samples: list[tuple[float, str, float]] = field(default_factory=list)  # (time, component, cores)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> CpuSampler:
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _processes(self, component: Component) -> list[psutil.Process]:
        out = []
        for pid in component.pids():
            try:
                proc = psutil.Process(pid)
                out.append(proc)
                if component.children:
                    out += proc.children(recursive=True)
            except psutil.Error:
                continue
        return out

    def _run(self) -> None:
        last: dict[int, float] = {}  # pid -> cpu seconds at the previous sample
        last_system, last_steal = _machine_seconds()
        last_time = time.monotonic()
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            elapsed = now - last_time
            seen: dict[int, float] = {}
            for name, component in self.components.items():
                used = 0.0
                for proc in self._processes(component):
                    try:
                        times = proc.cpu_times()
                    except psutil.Error:
                        continue
                    spent = times.user + times.system
                    if proc.pid in last:  # a process first seen now counts from now on
                        used += max(0.0, spent - last[proc.pid])
                    seen[proc.pid] = spent
                self.samples.append((now, name, used / elapsed))
            system, steal = _machine_seconds()
            self.samples.append((now, "machine", (system - last_system) / elapsed))
            self.samples.append((now, STOLEN, (steal - last_steal) / elapsed))
            last, last_system, last_steal, last_time = seen, system, steal, now

    def means(self, since: float) -> dict[str, float]:
        """Mean cores per component over the samples taken at or after `since` (time.monotonic())."""
        sums: dict[str, list[float]] = {}
        for t, name, cores in self.samples:
            if t >= since:
                sums.setdefault(name, []).append(cores)
        return {name: round(sum(v) / len(v), 2) for name, v in sums.items()}

    def write_csv(self, path: Path, origin: float) -> None:
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["seconds", "component", "cores"])
            for t, name, cores in self.samples:
                writer.writerow([f"{t - origin:.1f}", name, f"{cores:.3f}"])


def _machine_seconds() -> tuple[float, float]:
    """The machine's busy seconds and the hypervisor's steal, from one read of /proc/stat."""
    t = psutil.cpu_times()
    # Guest time is already inside user time on Linux; iowait and steal are not this machine's work.
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return float(busy), float(getattr(t, "steal", 0.0))

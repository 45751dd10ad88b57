"""The API's threads run with the CPU time slice API_CPU_SLICE_US asks for (services/api/cpuslice.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pydantic
import pytest

from denorm.config import Settings
from loadtest.localproc import free_port, wait_ready
from services.api import cpuslice
from tests.support import DENORM, cli_env


def slices(pid: int) -> dict[int, int | None]:
    """Each thread of `pid` and its slice in µs."""
    return {int(tid): cpuslice.current(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def test_every_thread_gets_the_slice_and_keeps_its_niceness() -> None:
    code = textwrap.dedent("""
        import os, threading
        from services.api import cpuslice
        started = threading.Event(); stop = threading.Event()
        def idle():
            started.set(); stop.wait()
        t = threading.Thread(target=idle); t.start(); started.wait()
        print(cpuslice.request(350), os.getpriority(os.PRIO_PROCESS, 0))
        print(*sorted(cpuslice.current(int(tid)) for tid in os.listdir("/proc/self/task")))
        stop.set(); t.join()
    """)
    out = subprocess.run(["nice", "-n", "5", sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split("\n")  # fmt: skip
    has, niceness = map(int, out[0].split())
    assert has == 350
    assert niceness == os.getpriority(os.PRIO_PROCESS, 0) + 5  # asking for a slice did not reset it
    assert [int(v) for v in out[1].split()] == [350, 350]  # the main thread and the one started before


def test_the_api_process_runs_with_the_configured_slice(database_url: str, redis_prefix: str) -> None:
    mine = cpuslice.current(os.getpid())
    for asked, expected in (("250", 250), ("0", mine)):
        port = free_port()
        env = cli_env(DATABASE_URL=database_url, REDIS_KEY_PREFIX=redis_prefix, API_ACCESS_LOG="false",
                      LOG_LEVEL="ERROR", API_ADMIN_PORT="0", API_CPU_SLICE_US=asked)  # fmt: skip
        proc = subprocess.Popen([*DENORM, "api", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            wait_ready(f"http://127.0.0.1:{port}", proc)
            threads = slices(proc.pid)
            assert threads and set(threads.values()) == {expected}, (asked, threads)
        finally:
            proc.terminate()
            proc.wait(timeout=15)


@pytest.mark.parametrize("value", [-1, 1, 99, 100_001])
def test_a_slice_the_kernel_would_not_take_is_refused(value: int) -> None:
    with pytest.raises(pydantic.ValidationError):
        Settings(api_cpu_slice_us=value)
    assert Settings(api_cpu_slice_us=0).api_cpu_slice_us == 0
    assert Settings(api_cpu_slice_us=100_000).api_cpu_slice_us == 100_000

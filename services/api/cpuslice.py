"""A short CPU time slice for the API's threads, so that a reply wakes the event loop at once.

Linux's scheduler (EEVDF, 6.6 and later) lets a running task finish its time slice before a task
that was just woken takes the core, unless the woken one asked for a shorter slice (per-task slices,
6.12 and later). The default slice is 0.7 ms times (1 + log2 of the CPUs), 1.4 ms on two cores. Every
round trip of a request (Postgres, Redis) ends in such a wake-up, so on cores the API shares with
other processes (Postgres's backends, Redis, other pods on a node, the load generator on the
development machine) each could wait up to a slice. The upvote makes four. Measured at 5000 users
in docs/performance.md ("A short slice for the API").

The slice is asked for with sched_setattr(2), for every thread the process has (a thread started
later inherits its parent's). Where that call does not exist (not Linux, another architecture) or
the kernel ignores per-task slices, nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

# sched_setattr / sched_getattr by architecture (the generic table's numbers on arm64).
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}
# struct sched_attr, SCHED_ATTR_SIZE_VER1: size, policy, flags, nice, priority, runtime, deadline,
# period, util_min, util_max.
_ATTR = struct.Struct("IIQiIQQQII")
SCHED_OTHER = 0


def _calls() -> tuple[ctypes.CDLL, int, int] | None:
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None or not os.path.isdir("/proc/self/task"):
        return None
    return ctypes.CDLL(None, use_errno=True), numbers[0], numbers[1]


def request(slice_us: int) -> int | None:
    """Ask for a `slice_us` slice for each of this process's threads, keeping their niceness
    (0: the kernel's default slice). The slice the main thread then has, in µs, or None where
    the call is not available."""
    calls = _calls()
    if calls is None:
        return None
    libc, setattr_nr, _ = calls
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    attr = ctypes.create_string_buffer(_ATTR.pack(_ATTR.size, SCHED_OTHER, 0, nice, 0, slice_us * 1000, 0, 0, 0, 0))
    for tid in os.listdir("/proc/self/task"):
        if libc.syscall(setattr_nr, int(tid), attr, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"sched_setattr: {os.strerror(errno)}")
    return current(os.getpid())


def current(tid: int) -> int | None:
    """The slice of thread `tid` in µs (its runtime in sched_getattr), or None where unknown."""
    calls = _calls()
    if calls is None:
        return None
    libc, _, getattr_nr = calls
    buffer = ctypes.create_string_buffer(_ATTR.size)
    if libc.syscall(getattr_nr, tid, buffer, _ATTR.size, 0) != 0:
        return None
    return int(_ATTR.unpack(buffer.raw)[5] // 1000)

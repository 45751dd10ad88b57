"""Stop signals handled without taking a lock in the signal handler.

A Python signal handler runs in the main thread between two bytecodes, possibly inside code that
holds a lock: a refresher whose handler called Event.set() while its main thread sat in
Event.wait() deadlocked on the event's own lock when signals came close together, and never
stopped. Here the handler does nothing; Python's C-level handler writes the signal's number to a
socket (signal.set_wakeup_fd), and a thread of its own reads it and calls stop() like any other
thread would.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _nothing(_signum: int, _frame: FrameType | None) -> None:
    """Installed so that the signal neither kills the process nor raises KeyboardInterrupt."""


def on_stop_signals(stop: Callable[[str], None]) -> None:
    """Call stop(signal name), from a thread, for every SIGTERM or SIGINT. Call from the main thread."""
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _nothing)

    def watch() -> None:
        with reader, writer:  # kept open for the life of the process
            while data := reader.recv(64):
                for number in data:
                    if number in STOP_SIGNALS:
                        stop(signal.Signals(number).name)

    threading.Thread(target=watch, name="signals", daemon=True).start()

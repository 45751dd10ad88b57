"""Keep-alive past file descriptor 1023: geventhttpclient 2.6 checks that a pooled connection is
still idle with `select.select`, which raises for a descriptor of 1024 or more, and the pool then
treats every such connection as dead: it closes it and opens a new one (a DNS lookup through
gevent's thread pool, a TCP handshake, a TIME_WAIT) for every request. A Locust worker holding
more than about a thousand users' connections then reconnects on nearly every request: at 5000
users on two workers, 12% of each worker's CPU went to that, and the API paid an accept and a new
connection for each request as well (docs/performance.md, issue 20).

The same check with poll(2), which has no such limit: a connection whose socket is readable while
idle has either been closed by the server (a FIN) or holds stray bytes, and is dropped either way.
"""

from __future__ import annotations

import select as _select
from typing import Any

from gevent import monkey
from geventhttpclient.connectionpool import ConnectionPool

# The interpreter's own poll: with a zero timeout it never blocks, so it needs no gevent wrapper.
_poll: Any = monkey.get_original("select", "poll") if monkey.is_module_patched("select") else _select.poll
_READABLE_OR_GONE = _select.POLLIN | _select.POLLPRI | _select.POLLERR | _select.POLLHUP | _select.POLLNVAL


def _is_socket_alive(self: ConnectionPool, sock: Any) -> bool:
    """True when a pooled connection can carry the next request."""
    if sock is None:
        return False
    try:
        fd = sock.fileno()
        if fd < 0:
            return False
        poller = _poll()
        poller.register(fd, _READABLE_OR_GONE)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False


def install() -> None:
    """Replace the pool's select-based check (idempotent)."""
    ConnectionPool._is_socket_alive = _is_socket_alive  # type: ignore[method-assign]

"""The load generator keeps its connections alive past file descriptor 1023 (loadtest/keepalive.py).

The client runs in a subprocess of its own (gevent's monkey patching must not reach the test
process) against a real HTTP/1.1 server here that counts the connections it accepts."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

CLIENT = """
import gevent.monkey; gevent.monkey.patch_all()
import os, resource, sys, time
from geventhttpclient import HTTPClient
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # the next sockets get fds past 1023
if sys.argv[2] == "fixed":
    from loadtest import keepalive
    keepalive.install()
client = HTTPClient("127.0.0.1", int(sys.argv[1]), concurrency=1)
pool = client._connection_pool
for path in sys.argv[3:]:
    response = client.get(path)
    assert response.status_code == 200, response.status_code
    response.read()
    time.sleep(0.1)  # a think time: a FIN the server sent has arrived by the next request
    if sys.argv[2] == "fixed":  # what the pool will decide for its idle connection
        idle = pool._socket_queue.peek()
        print(path, "reusable" if pool._is_socket_alive(idle) else "dropped")
print("ok")
"""


class _Counting(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless a side closes
    accepted = 0
    lock = threading.Lock()

    def setup(self) -> None:
        with _Counting.lock:
            _Counting.accepted += 1
        super().setup()

    def do_GET(self) -> None:
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        # /drop: the server closes the connection after answering, without saying so in the
        # headers, as a server whose keep-alive timeout ran out does: the client sees a FIN.
        self.close_connection = self.path == "/drop"

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Counting.accepted = 0
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _client(server: ThreadingHTTPServer, mode: str, *paths: str) -> tuple[int, list[str]]:
    """Run the client; the connections the server accepted, and the pool's verdict after each request."""
    port = server.server_address[1]
    done = subprocess.run([sys.executable, "-c", CLIENT, str(port), mode, *paths], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.endswith("ok\n"), done.stderr[-2000:]
    return _Counting.accepted, done.stdout.splitlines()[:-1]


def test_without_the_fix_every_request_past_fd_1023_opens_a_connection(server: ThreadingHTTPServer) -> None:
    # The library's behaviour the fix exists for: if this ever fails, the library was fixed and
    # loadtest/keepalive.py can go.
    assert _client(server, "library", *["/"] * 10)[0] == 10


def test_with_the_fix_one_connection_carries_every_request(server: ThreadingHTTPServer) -> None:
    accepted, verdicts = _client(server, "fixed", *["/"] * 10)
    assert accepted == 1
    assert verdicts == ["/ reusable"] * 10


def test_a_connection_the_server_closed_is_dropped_not_reused(server: ThreadingHTTPServer) -> None:
    accepted, verdicts = _client(server, "fixed", "/", "/drop", "/", "/")
    assert verdicts == ["/ reusable", "/drop dropped", "/ reusable", "/ reusable"]
    assert accepted == 2

"""`denorm api`: uvicorn serving the app on the public port and the admin port (services/api/ports.py)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable

import uvicorn
from uvicorn.supervisors import Multiprocess

from denorm.config import get_settings

STARTUP_FAILURE = 3  # uvicorn's exit code when the app does not start


def listen(host: str, ports: Iterable[int]) -> list[socket.socket]:
    """Bound sockets for uvicorn to serve (inherited by its worker processes), one per port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    bound: list[socket.socket] = []
    for port in ports:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.set_inheritable(True)
        bound.append(sock)
    return bound


def serve(host: str, port: int, workers: int, admin_port: int | None) -> int:
    """Serve until SIGTERM. Port 0, for either, is any free port (uvicorn's log says which)."""
    sockets = listen(host, (port, admin_port if admin_port is not None else get_settings().api_admin_port))
    # The app, built in each worker, learns the admin port from the environment, like the rest.
    os.environ["API_ADMIN_PORT"] = str(sockets[1].getsockname()[1])
    get_settings.cache_clear()
    settings = get_settings()
    config = uvicorn.Config(
        "services.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=settings.api_keepalive_seconds,
    )
    server = uvicorn.Server(config)
    if workers > 1:
        Multiprocess(config, sockets=sockets).run()
        return 0
    server.run(sockets=sockets)
    return 0 if server.started else STARTUP_FAILURE

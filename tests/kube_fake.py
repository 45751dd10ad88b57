"""A fake Kubernetes API server: real HTTP on 127.0.0.1, answering GETs from recorded responses.

`denorm deploy` runs unchanged against it, with the official client, through a kubeconfig that
points here. Each path answers its responses in turn, repeating the last one: a Job that is running
twice and then complete is three responses. Paths not set up answer 404 with a Status, as the API
server does. Every request is kept, so a test can check what was asked, in what order, with which
query and credentials.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kube"
TOKEN = "fake-token-for-tests"


def recorded(name: str) -> Any:
    """A recorded response body: parsed JSON for .json files, the text otherwise."""
    path = FIXTURES / name
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else text


@dataclass(frozen=True)
class Request:
    path: str
    query: dict[str, list[str]]
    authorization: str | None


@dataclass
class FakeKubeAPI:
    responses: dict[str, list[Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on(self, path: str, *bodies: Any) -> None:
        """Answer GET ``path`` with these bodies in turn (dicts as JSON, strings as text), then the last."""
        self.responses[path] = list(bodies)

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def answer(self, path: str) -> tuple[int, str, bytes]:
        with self.lock:
            queue = self.responses.get(path)
            if not queue:
                return 404, "application/json", json.dumps(_not_found(path)).encode()
            body = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(body, str):
            return 200, "text/plain", body.encode()
        return 200, "application/json", json.dumps(body).encode()

    def kubeconfig(self, directory: Path) -> Path:
        """A kubeconfig whose one context is this server, with a bearer token."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": TOKEN}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester", "namespace": "denorm"}}],
            "current-context": "fake",
        }
        path = directory / "kubeconfig"
        path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
        return path


def _not_found(path: str) -> dict[str, Any]:
    parts = path.strip("/").split("/")
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'{parts[-2] if len(parts) > 1 else "resource"} "{parts[-1]}" not found',
        "reason": "NotFound",
        "details": {"name": parts[-1], "kind": parts[-2] if len(parts) > 1 else ""},
        "code": 404,
    }


@contextmanager
def fake_kube_api() -> Iterator[FakeKubeAPI]:
    api = FakeKubeAPI()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            api.requests.append(Request(parts.path, parse_qs(parts.query), self.headers.get("Authorization")))
            status, content_type, body = api.answer(parts.path)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-kube-api", daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

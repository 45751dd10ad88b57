"""The images, built by `scripts/build-image.sh` (what `make image` runs) and run as the manifests
run them: read-only root, uid 10001, every capability dropped, no privilege escalation, /tmp a
tmpfs. Every workload of the services' image does its job against this test's Postgres and Redis
(host network); the load generator's image loads the suite. Without a Docker engine this builds
with buildah and runs with podman, which `make test` installs (scripts/system-packages.txt): a
missing tool fails the test, it is never skipped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from denorm.auth import mint_token
from loadtest.localproc import free_port

REPO = Path(__file__).resolve().parent.parent
IMAGE = "localhost/denorm:test"
LOADGEN = "localhost/denorm-loadgen:test"
SECRET = "image-test-" + "s" * 32
# As deploy/base/*.yaml run every container (securityContext, and the /tmp emptyDir).
AS_THE_MANIFESTS = ["--read-only", "--user", "10001:10001", "--cap-drop", "ALL", "--security-opt",
                    "no-new-privileges", "--tmpfs", "/tmp:rw,size=64m", "--network", "host"]  # fmt: skip
# podman on this kind of host: runc (crun refuses its hybrid cgroups), cgroupfs, no journald, and
# file limits within the machine's own.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""

pytestmark = pytest.mark.image


@pytest.fixture(scope="module")
def container_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    missing = [tool for tool in ("buildah", "podman", "debootstrap", "runc") if shutil.which(tool) is None]
    assert not missing, f"missing {' '.join(missing)}: make test installs them (scripts/system-packages.txt)"
    conf = tmp_path_factory.mktemp("containers") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


@pytest.fixture(scope="module")
def images(container_env: dict[str, str]) -> Iterator[None]:
    """Both targets, built as `make image` and `make image-loadgen` build them (layers cached)."""
    for target, tag in (("runtime", IMAGE), ("loadgen", LOADGEN)):
        done = subprocess.run([str(REPO / "scripts" / "build-image.sh"), target, tag], env=container_env,
                              capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    yield


def podman(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def run(env: dict[str, str], settings: list[str], *args: str, image: str = IMAGE) -> subprocess.CompletedProcess[str]:
    """One container, removed after, with the settings as environment variables."""
    return podman(env, "run", "--rm", *AS_THE_MANIFESTS, *settings, image, *args)


def test_the_services_image_runs_every_workload_as_the_manifests_run_it(
    images: None, container_env: dict[str, str], empty_database_url: str, redis_prefix: str
) -> None:
    settings = [f"--env={k}={v}" for k, v in {
        "DATABASE_URL": empty_database_url, "REDIS_URL": "redis://127.0.0.1:6379/0", "REDIS_KEY_PREFIX": redis_prefix,
        "ENVIRONMENT": "test", "JWT_SECRET": SECRET, "LOG_LEVEL": "WARNING", "REFRESHER_METRICS_PORT": "0",
    }.items()]  # fmt: skip
    for args in (["--help"], ["migrate"], ["seed", "--scale", "tiny"]):
        done = run(container_env, settings, *args)
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])

    port, admin = free_port(), free_port()
    name = f"denorm-api-{uuid.uuid4().hex[:8]}"
    started = podman(container_env, "run", "--detach", "--name", name, *AS_THE_MANIFESTS, *settings, IMAGE,
                     "api", "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin))  # fmt: skip
    assert started.returncode == 0, started.stderr
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, podman(container_env, "logs", name).stderr[-3000:]
            time.sleep(0.3)
        feed = requests.get(f"{base}/api/projects", params={"limit": 5}, timeout=5)
        assert feed.status_code == 200 and len(feed.json()["items"]) == 5
        project = feed.json()["items"][0]["id"]
        token = {"Authorization": f"Bearer {mint_token(3, SECRET)}"}
        upvote = requests.put(f"{base}/api/projects/{project}/upvote", headers=token, timeout=5)
        assert upvote.status_code == 200 and upvote.json()["upvoted"] is True
        assert requests.get(f"{base}/metrics", timeout=5).status_code == 404
        assert (
            "denorm_api_request_duration_seconds" in requests.get(f"http://127.0.0.1:{admin}/metrics", timeout=5).text
        )

        refreshed = run(container_env, settings, "refresher", "--once")
        assert refreshed.returncode == 0, refreshed.stderr[-2000:]
        checked = run(container_env, settings, "reconcile", "--dry-run")
        assert checked.returncode == 0, checked.stderr[-2000:]
        summary = json.loads(checked.stdout.strip().splitlines()[-1])
        assert (summary["status"], summary["drift_rows"]) == ("finished", 0), summary

        # SIGTERM (what Kubernetes sends): uvicorn finishes and the process exits 0.
        assert podman(container_env, "stop", "--time", "20", name).returncode == 0
        exit_code = podman(container_env, "inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert exit_code == "0", podman(container_env, "logs", name).stderr[-3000:]
    finally:
        podman(container_env, "rm", "--force", name)


def test_the_services_image_is_lean_and_the_load_generator_has_the_suite(
    images: None, container_env: dict[str, str]
) -> None:
    probe = "import importlib.util as u; print([m for m in ('locust', 'kubernetes') if u.find_spec(m)])"
    found = podman(container_env, "run", "--rm", *AS_THE_MANIFESTS, "--entrypoint", "python", IMAGE, "-c", probe)
    assert (found.returncode, found.stdout.strip()) == (0, "[]"), found.stderr
    # `denorm deploy` says what to install rather than failing on an import.
    deploy = run(container_env, [], "deploy", "cronjob-report")
    assert deploy.returncode != 0 and "pip install 'denorm[deploy]'" in deploy.stderr + deploy.stdout, deploy
    # The load generator loads the suite (its users are listed) and runs as the manifests run it.
    listed = run(container_env, [], "--locustfile=/app/loadtest/locustfile.py", "--list", image=LOADGEN)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "Reader" in listed.stdout or "Member" in listed.stdout, listed.stdout

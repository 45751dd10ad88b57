"""`denorm deploy` as people run it, against a fake Kubernetes API server (tests/kube_fake.py).

The command runs as a child process with the official client, unchanged; only the cluster is fake:
a real HTTP server answering the exact API paths the client asks for, from recorded responses in the
API's wire format (tests/fixtures/kube). The fixtures themselves validate against the Kubernetes
schemas, so they are objects a real API server could have sent.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.kube_fake import FIXTURES, TOKEN, FakeKubeAPI, fake_kube_api, recorded
from tests.support import cli_env, run_denorm

NS = "denorm"
JOB = f"/apis/batch/v1/namespaces/{NS}/jobs/denorm-migrate"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
API = f"/apis/apps/v1/namespaces/{NS}/deployments/denorm-api"
REFRESHER = f"/apis/apps/v1/namespaces/{NS}/deployments/denorm-refresher"
PODS = f"/api/v1/namespaces/{NS}/pods"
CRONJOB = f"/apis/batch/v1/namespaces/{NS}/cronjobs/denorm-reconcile"
WAIT = ["deploy", "wait", "--namespace", NS, "--interval", "0.05"]


@pytest.fixture
def kube() -> Iterator[FakeKubeAPI]:
    with fake_kube_api() as api:
        yield api


def deploy(kube: FakeKubeAPI, tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = cli_env(KUBECONFIG=str(kube.kubeconfig(tmp_path)))
    # Outside a pod, whatever machine runs the tests.
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return run_denorm(args, env=env, timeout=60)


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_recorded_responses_are_valid_kubernetes_objects(fixture: str) -> None:
    body = recorded(fixture)
    for obj in body["items"] if body["kind"].endswith("List") else [body]:
        kubernetes_validate.validate(obj, "1.30", strict=True)


def test_wait_follows_the_job_then_each_rollout(kube: FakeKubeAPI, tmp_path: Path) -> None:
    kube.on(
        JOB,
        recorded("job-migrate-running.json"),
        recorded("job-migrate-running.json"),
        recorded("job-migrate-complete.json"),
    )
    kube.on(
        API,
        recorded("deployment-api-progressing.json"),
        recorded("deployment-api-old-pods-terminating.json"),
        recorded("deployment-api-complete.json"),
    )
    kube.on(REFRESHER, recorded("deployment-refresher-complete.json"))

    result = deploy(
        kube,
        tmp_path,
        [*WAIT, "--job", "denorm-migrate", "--deployment", "denorm-api", "--deployment", "denorm-refresher"],
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "job denorm-migrate: running (1 active)",
        "job denorm-migrate: complete in 4 s",
        "deployment denorm-api: 1 of 3 new replicas updated",
        "deployment denorm-api: 1 old replicas pending termination",
        "deployment denorm-api: rolled out (3 available)",
        "deployment denorm-refresher: rolled out (2 available)",
        "deploy wait: done",
    ]
    # The Job first, to completion; then each Deployment in the order given. Each with the kubeconfig's token.
    assert kube.paths() == [JOB, JOB, JOB, API, API, API, REFRESHER]
    assert {r.authorization for r in kube.requests} == {f"Bearer {TOKEN}"}


def test_wait_fails_fast_with_the_log_of_a_failed_migration(kube: FakeKubeAPI, tmp_path: Path) -> None:
    kube.on(JOB, recorded("job-migrate-running.json"), recorded("job-migrate-failed.json"))
    kube.on(PODS, recorded("pods-migrate-failed.json"))
    # The latest of the Job's three pods is the one whose log tells the last word.
    kube.on(f"{PODS}/denorm-migrate-q9w4d/log", recorded("log-migrate-failed.txt"))

    result = deploy(kube, tmp_path, [*WAIT, "--job", "denorm-migrate", "--deployment", "denorm-api"])

    assert result.returncode == 1
    assert (
        "job denorm-migrate failed (BackoffLimitExceeded): Job has reached the specified backoff limit" in result.stderr
    )
    assert "last 20 lines of pod denorm-migrate-q9w4d, container migrate:" in result.stderr
    assert "permission denied for schema public" in result.stderr
    assert API not in kube.paths()  # no point waiting for a rollout on an unmigrated schema
    pods, log = kube.requests[-2:]
    assert pods.query == {"labelSelector": ["batch.kubernetes.io/job-name=denorm-migrate"]}
    assert log.query == {"container": ["migrate"], "tailLines": ["20"]}


def test_wait_reports_a_rollout_past_its_deadline_and_the_stuck_pod(kube: FakeKubeAPI, tmp_path: Path) -> None:
    kube.on(JOB, recorded("job-migrate-complete.json"))
    kube.on(API, recorded("deployment-api-progressing.json"), recorded("deployment-api-deadline-exceeded.json"))
    kube.on(PODS, recorded("pods-api-stuck.json"))

    result = deploy(kube, tmp_path, [*WAIT, "--job", "denorm-migrate", "--deployment", "denorm-api"])

    assert result.returncode == 1
    assert "deployment denorm-api exceeded its progress deadline" in result.stderr
    assert (
        "pod denorm-api-5f7d9c8b6d-v8n2x: container migrate: CreateContainerConfigError: "
        'secret "denorm-secrets" not found' in result.stderr
    )
    assert "7b9c6d5e4f" not in result.stderr  # the old, healthy pod is not a problem
    (pods,) = (r for r in kube.requests if r.path == PODS)
    assert pods.query == {"labelSelector": ["app.kubernetes.io/component=api,app.kubernetes.io/name=denorm"]}


def test_wait_gives_up_at_the_timeout(kube: FakeKubeAPI, tmp_path: Path) -> None:
    kube.on(API, recorded("deployment-api-progressing.json"))
    kube.on(PODS, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})

    result = deploy(kube, tmp_path, [*WAIT, "--deployment", "denorm-api", "--timeout", "0.5"])

    assert result.returncode == 1
    assert "timed out waiting for deployment denorm-api (1 of 3 new replicas updated)" in result.stderr
    assert kube.paths().count(API) >= 3  # it polled until the deadline, then asked why


def test_wait_says_when_the_job_does_not_exist(kube: FakeKubeAPI, tmp_path: Path) -> None:
    result = deploy(kube, tmp_path, [*WAIT, "--job", "denorm-migrate"])
    assert result.returncode == 1
    assert "job denorm/denorm-migrate not found" in result.stderr


def test_wait_needs_something_to_wait_for(kube: FakeKubeAPI, tmp_path: Path) -> None:
    result = deploy(kube, tmp_path, WAIT)
    assert result.returncode == 2
    assert kube.requests == []


def test_without_a_cluster_it_says_so() -> None:
    env = cli_env(KUBECONFIG="/nonexistent/kubeconfig")
    env.pop("KUBERNETES_SERVICE_HOST", None)
    result = run_denorm(["deploy", "wait", "--job", "denorm-migrate"], env=env)
    assert result.returncode == 1
    assert "no cluster to talk to" in result.stderr


def _reconcile_jobs(*, last_failed: bool) -> dict[str, Any]:
    jobs: dict[str, Any] = recorded("jobs-reconcile.json")
    if not last_failed:
        jobs["items"] = [j for j in jobs["items"] if not j["metadata"]["name"].endswith("29146500")]
    return jobs


def _cronjob(last_success: datetime) -> dict[str, Any]:
    cronjob: dict[str, Any] = recorded("cronjob-reconcile.json")
    cronjob["status"]["lastSuccessfulTime"] = last_success.strftime("%Y-%m-%dT%H:%M:%SZ")
    return cronjob


def test_cronjob_report_lists_each_run_and_flags_a_failed_last_run(kube: FakeKubeAPI, tmp_path: Path) -> None:
    kube.on(CRONJOB, recorded("cronjob-reconcile.json"))
    kube.on(JOBS, _reconcile_jobs(last_failed=True))

    result = deploy(kube, tmp_path, ["deploy", "cronjob-report", "-n", NS, "--cronjob", "denorm-reconcile"])

    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "cronjob denorm-reconcile: schedule '0 3 * * *' (Etc/UTC)"
    assert lines[1] == "  last scheduled 2025-06-02T03:00:00Z, last success 2025-06-01T03:04:12Z"
    runs = [line.split() for line in lines[2:5]]
    assert [(r[0], r[1], r[2], r[4]) for r in runs] == [
        ("2025-05-31T03:00:00Z", "succeeded", "227", "denorm-reconcile-29143620"),
        ("2025-06-01T03:00:00Z", "succeeded", "250", "denorm-reconcile-29145060"),
        ("2025-06-02T03:00:00Z", "failed", "7200", "denorm-reconcile-29146500"),
    ]
    assert "denorm-reconcile-29000000" not in result.stdout  # owned by an earlier CronJob of that name
    assert lines[5:] == [
        "PROBLEM: the last finished run, denorm-reconcile-29146500, failed (DeadlineExceeded): "
        "Job was active longer than specified deadline"
    ]
    jobs_request = next(r for r in kube.requests if r.path == JOBS)
    assert jobs_request.query == {
        "labelSelector": ["app.kubernetes.io/component=reconciler,app.kubernetes.io/name=denorm"]
    }


def test_cronjob_report_is_ok_after_a_recent_success(kube: FakeKubeAPI, tmp_path: Path) -> None:
    kube.on(CRONJOB, _cronjob(datetime.now(UTC) - timedelta(hours=2)))
    kube.on(JOBS, _reconcile_jobs(last_failed=False))

    result = deploy(kube, tmp_path, ["deploy", "cronjob-report", "-n", NS, "--max-age-hours", "26", "--json"])

    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["problems"] == []
    assert [run["outcome"] for run in report["runs"]] == ["succeeded", "succeeded"]
    assert report["runs"][0] == {
        "job": "denorm-reconcile-29143620",
        "scheduled": "2025-05-31T03:00:00Z",
        "started": "2025-05-31T03:00:01Z",
        "finished": "2025-05-31T03:03:48Z",
        "duration_s": 227.0,
        "outcome": "succeeded",
        "detail": "",
    }


def test_cronjob_report_flags_a_success_older_than_the_bound(kube: FakeKubeAPI, tmp_path: Path) -> None:
    stale = datetime.now(UTC) - timedelta(hours=50)
    kube.on(CRONJOB, _cronjob(stale))
    kube.on(JOBS, _reconcile_jobs(last_failed=False))

    result = deploy(kube, tmp_path, ["deploy", "cronjob-report", "-n", NS, "--max-age-hours", "26"])

    assert result.returncode == 1
    assert f"PROBLEM: last success at {stale.strftime('%Y-%m-%dT%H:%M:%S')}" in result.stdout
    assert "more than 26 h ago" in result.stdout


def test_cronjob_report_of_a_missing_cronjob(kube: FakeKubeAPI, tmp_path: Path) -> None:
    result = deploy(kube, tmp_path, ["deploy", "cronjob-report", "-n", NS, "--cronjob", "nope"])
    assert result.returncode == 1
    assert "cronjob denorm/nope not found" in result.stderr

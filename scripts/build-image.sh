#!/usr/bin/env bash
# Build one target of the Dockerfile: `runtime` (the services' image) or `loadgen` (Locust and the
# suite). With `docker build` where a Docker engine answers; else with buildah, against the official
# base when a registry answers, else against a local stand-in (scripts/standin-base.sh).
#
#   scripts/build-image.sh TARGET TAG         (PYTHON_IMAGE=... picks the base, e.g. pinned by digest)
set -euo pipefail
cd "$(dirname "$0")/.."
target=$1
tag=$2
official=python:3.11-slim-bookworm
base_args=()
[[ -n "${PYTHON_IMAGE:-}" ]] && base_args=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  exec docker build --target "$target" --tag "$tag" "${base_args[@]}" .
fi
command -v buildah >/dev/null || {
  echo "no Docker engine and no buildah: install one (as root, make test installs buildah: scripts/system-setup.sh test)" >&2
  exit 1
}
if [[ -z "${PYTHON_IMAGE:-}" ]]; then
  if timeout 60 buildah pull --quiet "docker.io/library/$official" >/dev/null 2>&1; then
    base_args=(--build-arg "PYTHON_IMAGE=docker.io/library/$official")
  else
    echo "no registry answers: building against a local stand-in for $official" >&2
    base_args=(--build-arg "PYTHON_IMAGE=$(scripts/standin-base.sh)")
  fi
fi
# The host's certificate authorities and pip configuration, for the build's pip behind a proxy
# that has its own CA: mounted into the build steps only, never copied into a layer.
mounts=()
for file in /etc/ssl/certs/ca-certificates.crt /etc/pip.conf; do
  [[ -f "$file" ]] && mounts+=(--volume "$file:$file:ro")
done
exec buildah bud --layers --network host --target "$target" --tag "$tag" "${base_args[@]}" "${mounts[@]}" .

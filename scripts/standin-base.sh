#!/usr/bin/env bash
# A local stand-in for python:3.11-slim-bookworm, for a machine that reaches Debian's packages and
# PyPI but no container registry: Debian bookworm's own Python 3.11 (debootstrap), with pip and
# setuptools in /usr/local as the official image has them (as root, Debian's pip installs there). Made
# once, then reused.
#
#   scripts/standin-base.sh [NAME]     (default localhost/denorm-python:3.11-bookworm; prints NAME)
set -euo pipefail
name=${1:-localhost/denorm-python:3.11-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if podman image exists "$name"; then
  echo "$name"
  exit 0
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
echo "making the stand-in base $name (debootstrap, about a minute)" >&2
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates,netbase \
  bookworm "$root" "$mirror" >&2
# The official image's pip is its own, in /usr/local, and not under Debian's PEP 668 marker, which
# would stop the Dockerfile's `pip uninstall` in its runtime stage.
rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED
wheel=$(cd "$root" && ls usr/share/python-wheels/pip-*.whl | head -n 1)
chroot "$root" python3 "/$wheel/pip" install --quiet --no-index --find-links /usr/share/python-wheels \
  --ignore-installed pip setuptools >&2
chroot "$root" apt-get clean
# What Debian's slim images leave out too: documentation, manual pages and translations (52 MB).
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* "$root"/usr/share/man/* \
  "$root"/usr/share/info/* "$root"/usr/share/locale/*
tar -C "$root" -c . | podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$name" >&2
echo "$name"

# syntax=docker/dockerfile:1
# Two images from one file. The default target, `runtime`, is the services' image: its entry point
# is `denorm`, so each Deployment, Job and CronJob picks its subcommand (api, refresher, migrate,
# reconcile). The `loadgen` target is the load generator's: Locust and the suite, for
# deploy/components/loadgenerator. `make image` and `make image-loadgen` build them with Docker or,
# on a machine without an engine, with buildah (docs/deploy.md).
#
#   docker build -t denorm:0.1.0 .
#   docker build --target loadgen -t denorm-loadgen:0.1.0 .
#   docker run --rm denorm:0.1.0 --help
#
# Pin the base by digest with --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:...

# Every stage must share one base: the venv's interpreter is a symlink into it.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The venv gets no pip of its own: the base image's pip installs into it, and stays behind here.
RUN python -m venv --without-pip /opt/venv
COPY requirements-image.lock /tmp/requirements-image.lock
# Hash-checked, and wheels only: nothing is compiled, so no compiler is needed even in this stage.
RUN pip --python /opt/venv/bin/python install --require-hashes --only-binary=:all: \
        -r /tmp/requirements-image.lock
WORKDIR /src
COPY pyproject.toml README.md ./
COPY denorm/ denorm/
COPY services/ services/
COPY db/ db/
# A regular (not editable) install: the wheel carries db/**/*.sql. pip byte-compiles everything now,
# since the running container's root filesystem is read-only.
RUN pip --python /opt/venv/bin/python install --no-deps .
# Debug sections out of the compiled modules that ship with them (uvloop's are 12 of its 14 MB),
# with binutils in this stage only. Files without debug sections (the wheels' bundled libraries,
# rewritten by auditwheel) are left as they are.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends binutils && rm -rf /var/lib/apt/lists/* \
    && find /opt/venv -name '*.so' -type f -exec sh -c \
        'for f; do readelf -S "$f" | grep -q "\.debug_info" && strip --strip-debug "$f"; done; true' sh {} +

# The services' venv plus Locust and what it needs (the same pins).
FROM build AS build-loadgen
COPY requirements-loadgen.lock /tmp/requirements-loadgen.lock
RUN pip --python /opt/venv/bin/python install --require-hashes --only-binary=:all: \
        -r /tmp/requirements-loadgen.lock

FROM ${PYTHON_IMAGE} AS base
# A numeric uid, so that Kubernetes can check runAsNonRoot without resolving a name. The base image's
# own pip, setuptools and wheel go: nothing installs or builds anything here, and the venv (which
# does not see the system site-packages) needs none of them.
RUN groupadd --system --gid 10001 denorm \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin denorm \
    && python -m pip uninstall --yes --no-cache-dir pip setuptools wheel
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    HOME=/tmp
WORKDIR /app

FROM base AS loadgen
LABEL org.opencontainers.image.title="denorm-loadgen" \
      org.opencontainers.image.description="denorm's Locust suite: locust -f /app/loadtest/locustfile.py"
COPY --from=build-loadgen /opt/venv /opt/venv
COPY loadtest/ /app/loadtest/
USER 10001:10001
# Locust web UI, Locust master <- workers
EXPOSE 8089 5557
ENTRYPOINT ["locust"]
CMD ["--help"]

FROM base AS runtime
LABEL org.opencontainers.image.title="denorm" \
      org.opencontainers.image.description="denorm: read models, read API, refresher, reconciler, migrations"
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
# the API's public and admin ports, the refresher's metrics
EXPOSE 8000 9100 9101
ENTRYPOINT ["denorm"]
CMD ["--help"]

# syntax=docker/dockerfile:1
# One image for every workload. The entry point is `denorm`, so each Deployment, Job and CronJob
# picks its subcommand (api, refresher, migrate, reconcile); the load test overrides it with `locust`.
#
#   docker build -t denorm:0.1.0 .
#   docker run --rm denorm:0.1.0 --help

# Both stages must share one base: the venv's interpreter is a symlink into it.
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

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="denorm" \
      org.opencontainers.image.description="denorm: read models, read API, refresher, reconciler, migrations"
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
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The Locust suite, for the in-cluster load test: locust -f /app/loadtest/locustfile.py
COPY loadtest/ /app/loadtest/
USER 10001:10001
# api, refresher metrics, Locust web UI, Locust master <- workers
EXPOSE 8000 9101 8089 5557
ENTRYPOINT ["denorm"]
CMD ["--help"]

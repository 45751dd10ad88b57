# The few targets a person needs. Everything installs into .venv from the hashed lock file.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
export DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/denorm
export REDIS_URL    ?= redis://127.0.0.1:6379/0
# A developer machine: the development JWT secret is accepted (an unset ENVIRONMENT means production).
export ENVIRONMENT  ?= development

.PHONY: help install run test quick lint typecheck pytest bench loadtest manifests image image-loadgen fmt lock clean \
	system-run system-test system-bench

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

# The system tools first (scripts/system-packages.txt): installed as root, else one line says how.
system-run system-test system-bench: system-%:
	@scripts/system-setup.sh $*

$(BIN)/denorm: requirements.lock pyproject.toml | system-run
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $@

install: $(BIN)/denorm  ## create .venv with the locked dependencies

run: install  ## migrate, seed the tiny dataset, start the API and the refresher
	$(BIN)/denorm migrate --create-database
	$(BIN)/denorm seed --scale tiny
	scripts/run-demo.sh

test: system-test lint typecheck pytest  ## everything: ruff, mypy, hadolint, promtool and every test (about 20 min)

# Day to day: the tests that need no image build, no private Postgres cluster and no load run.
QUICK := not image and not cluster and not loadrun

quick: system-test lint typecheck  ## lint, mypy and every test but the image, private-cluster and load-run ones (minutes)
	$(BIN)/pytest -m "$(QUICK)" $(PYTEST_ARGS)

lint: install | system-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile
	promtool check rules deploy/monitoring/alerts.yaml
	promtool test rules deploy/monitoring/alerts-test.yaml

typecheck: install
	$(BIN)/mypy

pytest: install | system-test
	$(BIN)/pytest $(PYTEST_ARGS)

BENCHES ?= seed_speed hot_rows trigger_cost bulk backfill freshness maintenance_cost search_cost search_load api_queries api_throughput upvote_latency upvote_invalidation replica_replay

bench: install | system-bench  ## every benchmark, one after the other (BENCHES="hot_rows bulk" for some); figures in docs/
	@for b in $(BENCHES); do echo "== python -m bench.$$b"; $(BIN)/python -m bench.$$b || exit 1; done

LOADTEST_ARGS ?=

loadtest: install  ## the Locust suite on a seeded system: gates, CSV, HTML, plot in loadtest/results/ (LOADTEST_ARGS="--users 500")
	$(BIN)/denorm loadtest $(LOADTEST_ARGS)

IMAGE         ?= denorm:dev
LOADGEN_IMAGE ?= denorm-loadgen:dev

image:  ## the services' image, $(IMAGE): docker build where an engine answers, else buildah (docs/deploy.md)
	scripts/build-image.sh runtime $(IMAGE)

image-loadgen:  ## the load generator's image (Locust and the suite), $(LOADGEN_IMAGE)
	scripts/build-image.sh loadgen $(LOADGEN_IMAGE)

OVERLAYS := $(notdir $(wildcard deploy/overlays/*))

manifests: install  ## render each Kubernetes overlay with the pinned kustomize into build/manifests/
	@mkdir -p build/manifests
	@for o in $(OVERLAYS); do $(BIN)/kubectl kustomize deploy/overlays/$$o > build/manifests/$$o.yaml || exit 1; \
		echo "build/manifests/$$o.yaml"; done

fmt: install  ## format and fix imports
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lock:  ## re-pin every dependency into requirements.lock, and the images' subsets into requirements-{image,loadgen}.lock
	uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes -o requirements.lock
	uv pip compile pyproject.toml --python-version 3.11 --generate-hashes \
		-c requirements.lock -o requirements-image.lock
	uv pip compile pyproject.toml --extra loadtest --python-version 3.11 --generate-hashes \
		-c requirements.lock -o requirements-loadgen.lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# The two commands:  `make serve` (default models, built on first run)  and  `make test` (every check).
# Linux only (cgroups, fcntl, /proc); the outside tools each target needs are in docs/development.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STORE ?= model_store

# $(call require,TOOL,HOW TO GET IT): a target that needs an outside tool stops and says so, never skips.
require = @command -v $(1) > /dev/null || { echo "make $@: $(1) is missing: $(2)" >&2; exit 1; }

.PHONY: serve install venv test lint format bench image-test deploy-check clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

# Serving: torch first (the build for this machine: scripts/install-torch.sh says which and why), then the
# package with the `train` extra, because `bertserve bootstrap` trains the default models, and the `onnx`
# extra, so that the `auto` backend can pick onnx on a CPU without native bf16 whichever target ran first.
$(BIN)/.serve-installed: pyproject.toml scripts/install-torch.sh
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and f"make: $(PYTHON) is Python {sys.version.split()[0]}; bertserve needs 3.11 or newer (make PYTHON=python3.11 ...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	scripts/install-torch.sh $(BIN)/pip
	$(BIN)/pip install -q -e '.[train,onnx]'
	touch $@

# Checks: the `dev` extra on top (pytest, ruff, httpx, schemathesis, sentence-transformers).
$(BIN)/.dev-installed: $(BIN)/.serve-installed
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.serve-installed  ## create .venv with what `make serve` installs, without building any model

venv: $(BIN)/.dev-installed  ## create .venv with the service, training and test dependencies

serve: $(BIN)/.serve-installed  ## build the default model store if missing, then serve it on :8000
	$(BIN)/bertserve bootstrap --store $(STORE)
	$(BIN)/bertserve serve --store $(STORE)

test: $(BIN)/.dev-installed  ## every check: lint, unit, HTTP, training, deploy manifests, Prometheus rules
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: $(BIN)/.dev-installed  ## ruff only
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(BIN)/.dev-installed  ## apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench: $(BIN)/.dev-installed  ## throughput/latency benchmark: ceiling vs served vs backends (writes bench/results/)
	$(call require,wrk,apt-get install wrk (the load generator whose numbers docs/performance.md reports))
	$(BIN)/python -m bench.run --store $(STORE)

deploy-check: $(BIN)/.dev-installed  ## render k8s overlays, validate them offline (schemas, policies, checkov), promtool
	scripts/install-ci-tools.sh
	scripts/check-manifests.sh

image-test: $(BIN)/.dev-installed  ## build the Dockerfile with buildah and serve from the image (root, ~4 min; not in `make test`)
	scripts/image-test.sh

clean:  ## remove the virtual environment and caches (not the model store)
	rm -rf $(VENV) .pytest_cache .ruff_cache

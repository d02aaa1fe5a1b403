# The two commands:  `make serve` (default models, built on first run)  and  `make test` (every check).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STORE ?= model_store

.PHONY: serve test lint format bench image-test deploy-check clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # pinned first: an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install -q -e '.[dev,train]'
	touch $@

venv: $(BIN)/.installed  ## create .venv with the service, training and test dependencies

serve: $(BIN)/.installed  ## build the default model store if missing, then serve it on :8000
	$(BIN)/bertserve bootstrap --store $(STORE)
	$(BIN)/bertserve serve --store $(STORE)

test: $(BIN)/.installed  ## every check: lint, unit, HTTP, training, deploy manifests, Prometheus rules
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: $(BIN)/.installed  ## ruff only
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(BIN)/.installed  ## apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench: $(BIN)/.installed  ## throughput/latency benchmark: ceiling vs served vs backends (writes bench/results/)
	$(BIN)/python -m bench.run --store $(STORE)

deploy-check: $(BIN)/.installed  ## render k8s overlays, validate them offline (schemas, policies, checkov), promtool
	scripts/install-ci-tools.sh
	scripts/check-manifests.sh

image-test: $(BIN)/.installed  ## build the Dockerfile with buildah and serve from the image (root, ~4 min; not in `make test`)
	scripts/image-test.sh

clean:  ## remove the virtual environment and caches (not the model store)
	rm -rf $(VENV) .pytest_cache .ruff_cache

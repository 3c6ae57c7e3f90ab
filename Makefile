# mailexec — what a developer can do. `make help` lists it.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help venv run test lint bench bench-quick bench-mta chaos soak soak-mix clean
help:           ## this list
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/' | sort

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: $(STAMP)  ## create the virtualenv and install mailexec with its test tools

run: $(STAMP)   ## the whole pipeline on this machine, demo data in; prints where everything is
	$(BIN)/python -m mailexec.devrun

test: $(STAMP)  ## the whole test suite against the local PostgreSQL and RabbitMQ
	$(BIN)/python -m mailexec.devrun --services-only
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff + mypy
	$(BIN)/ruff check mailexec shared services migrations tests bench deploy tools
	$(BIN)/mypy mailexec shared services

bench: $(STAMP)  ## throughput, latency, CPU/delivery: mailexec vs Postfix pipe(8) vs raw spawn (root, ~10 min); BENCH_PROFILE=1 adds py-spy
	$(BIN)/python -m mailexec.devrun --services-only
	$(BIN)/python -m bench

bench-quick: $(STAMP) ## the same with N=500, 1 repetition (~3-4 min)
	$(BIN)/python -m mailexec.devrun --services-only
	BENCH_QUICK=1 $(BIN)/python -m bench

bench-mta: $(STAMP) ## just the MTA paths: Postfix -> pipe(8) / lmtp(8) / mailexec submit, LMTP vs HTTP ingest (~2 min)
	$(BIN)/python -m mailexec.devrun --services-only
	BENCH_QUICK=1 BENCH_N=$${BENCH_N:-2000} BENCH_ONLY=mta $(BIN)/python -m bench

chaos: $(STAMP) ## long fault run (CHAOS_N=5000; restarts the machine's RabbitMQ and a private PostgreSQL)
	$(BIN)/python -m tests.chaos

soak: $(STAMP)  ## hold 80% of make bench's peak (SOAK_RATE) for SOAK_MINUTES (10); RSS, DB conns, queues (root)
	$(BIN)/python -m bench.soak

soak-mix: $(STAMP)  ## the chaos mix (succeed/fail/defer, a DSN per message) at SOAK_RATE (40) msg/s
	$(BIN)/python -m tests.chaos.soak

clean:          ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# ---- deployment (deploy/, charts/mailexec, tools/image.py) ----
IMAGE ?= localhost/mailexec:dev
LOCAL_BASE ?= localhost/mailexec-base:bookworm
COMPOSE ?= $(shell if docker compose version >/dev/null 2>&1; then echo "docker compose"; \
             elif command -v podman-compose >/dev/null; then echo podman-compose; \
             else echo "docker compose"; fi)

.PHONY: image image-deps image-local image-check compose-up chart-lint

image: $(STAMP) ## build deploy/Dockerfile on its default base (python:3.11-slim; needs a registry)
	$(BIN)/python tools/image.py build --tag $(IMAGE)

image-deps:     ## podman, runc and debootstrap (installed from Debian when root)
	@if command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap; \
	else echo "install podman, runc and debootstrap (Debian: apt-get install -y podman runc debootstrap)"; exit 1; fi

image-local: $(STAMP) image-deps ## local Debian bookworm base (debootstrap + python3), imported as $(LOCAL_BASE)
	$(BIN)/python tools/image.py base --base-tag $(LOCAL_BASE)

image-check: $(STAMP) image-deps ## build on the local base, run --help and the executor self-check, print the size
	$(BIN)/python tools/image.py local --base-tag $(LOCAL_BASE) --tag $(IMAGE)

compose-up:     ## the whole pipeline in containers (deploy/compose.yaml), health-gated
	MAILEXEC_IMAGE=$(IMAGE) $(COMPOSE) -f deploy/compose.yaml up -d --build --wait
	@echo "ingest :8025  policy :8026  notifier :8027  executor metrics :8028  DSNs (mailpit) :8029  RabbitMQ UI :15672"

chart-lint: $(STAMP) ## helm lint (Helm's Go SDK), Kubernetes schema validation, chart docs up to date
	$(BIN)/python deploy/chart_lint.py

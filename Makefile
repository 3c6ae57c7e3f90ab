# mailexec — what a developer can do. `make help` lists it.
# The newest of python3.13, python3.12, python3.11 on PATH that runs (a pyenv shim of a
# version not selected does not), else python3 if it is 3.11 or newer; PYTHON=... overrides.
# An existing $(VENV) keeps its own Python: `make clean venv` to switch.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
            if $$p -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then \
              echo $$p; break; fi; done)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help venv helpers run test test-unit lint man bench bench-quick bench-mta chaos soak soak-mix clean
help:           ## this list
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/' | sort

# The sandbox's root helper, built here (install time), never by the executor at run time:
# it refuses a helper that root does not own or others can write (services/executor/sandbox).
HELPER_DIR := services/executor/sandbox
HELPER     := $(VENV)/libexec/mailexec-spawner

LOCKS := deploy/requirements.lock deploy/requirements-test.lock

$(STAMP): pyproject.toml $(LOCKS)
	@if [ ! -x $(BIN)/python ]; then \
	  if [ -z "$(PYTHON)" ]; then \
	    echo "need Python 3.11, 3.12 or 3.13 on PATH (python3.13, python3.12 or python3.11;"; \
	    echo "Debian/Ubuntu: apt-get install python3 python3-venv), or say which: make PYTHON=/path/to/python3"; \
	    exit 1; fi; \
	  $(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
	    || { echo "$(PYTHON) does not run, or is older than Python 3.11"; exit 1; }; \
	  echo "creating $(VENV) with $$($(PYTHON) -c 'import sys; print(sys.executable, sys.version.split()[0])')"; \
	  $(PYTHON) -m venv $(VENV); \
	fi
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(addprefix -c ,$(LOCKS)) -e '.[test]'
	@touch $@

$(HELPER): $(HELPER_DIR)/spawner.c $(HELPER_DIR)/child_recipe.h $(HELPER_DIR)/slot.h $(HELPER_DIR)/capset.h | $(STAMP)
	@command -v cc >/dev/null || { echo "need a C compiler (cc) to build $@ (Debian: apt-get install gcc libc6-dev)"; exit 1; }
	mkdir -p $(VENV)/libexec
	cc -O2 -Wall -Werror -static -o $@.tmp $(HELPER_DIR)/spawner.c 2>/dev/null \
	  || cc -O2 -Wall -Werror -o $@.tmp $(HELPER_DIR)/spawner.c
	chmod 0755 $@.tmp
	@if [ "$$(id -u)" = 0 ]; then chown 0:0 $@.tmp; \
	 else echo "note: $@ must be owned by root (the executor refuses it otherwise): sudo chown 0:0 $@"; fi
	mv -f $@.tmp $@

venv: $(STAMP) $(HELPER)  ## create the virtualenv, install mailexec with its test tools, build the sandbox helper

helpers: $(HELPER)  ## (re)build the sandbox's root helper into $(VENV)/libexec

run: $(STAMP) $(HELPER)   ## the whole pipeline on this machine, demo data in; prints where everything is
	$(BIN)/python -m mailexec.devrun

test: $(STAMP) $(HELPER)  ## the whole test suite against the local PostgreSQL and RabbitMQ (says first what it will install)
	$(BIN)/python -m mailexec.devrun --services-only --announce-test-installs
	$(BIN)/pytest -q -p no:cacheprovider --durations=30 $(PYTEST_ARGS)  # the slowest, to keep the suite under 10 min

test-unit: $(STAMP)  ## the decision logic's unit tests (tests/unit): seconds, any user, no PostgreSQL/RabbitMQ
	$(BIN)/pytest -q -p no:cacheprovider tests/unit $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff + mypy
	$(BIN)/ruff check mailexec shared services migrations tests testing bench deploy tools
	$(BIN)/mypy mailexec shared services

man: $(STAMP)  ## docs/mailexec.1 (roff) from the CLI's command tree; `man -l docs/mailexec.1`
	$(BIN)/python tools/manpage.py

bench: $(STAMP) $(HELPER)  ## throughput, latency, CPU/delivery: mailexec vs Postfix pipe(8) vs raw spawn (root, ~10 min); BENCH_PROFILE=1 adds py-spy
	$(BIN)/python -m mailexec.devrun --services-only
	$(BIN)/python -m bench

bench-quick: $(STAMP) $(HELPER) ## the same with N=500, 1 repetition (~3-4 min)
	$(BIN)/python -m mailexec.devrun --services-only
	BENCH_QUICK=1 $(BIN)/python -m bench

bench-mta: $(STAMP) $(HELPER) ## just the MTA paths: Postfix -> pipe(8) / lmtp(8) / mailexec submit, LMTP vs HTTP ingest (~2 min)
	$(BIN)/python -m mailexec.devrun --services-only
	BENCH_QUICK=1 BENCH_N=$${BENCH_N:-2000} BENCH_ONLY=mta $(BIN)/python -m bench

chaos: $(STAMP) $(HELPER) ## long fault run (CHAOS_N=5000; restarts the machine's RabbitMQ and a private PostgreSQL)
	$(BIN)/python -m tests.chaos

soak: $(STAMP) $(HELPER)  ## hold 80% of make bench's peak (SOAK_RATE) for SOAK_MINUTES (10); RSS, DB conns, queues (root)
	$(BIN)/python -m bench.soak

soak-mix: $(STAMP) $(HELPER)  ## the chaos mix (succeed/fail/defer, a DSN per message) at SOAK_RATE (40) msg/s
	$(BIN)/python -m tests.chaos.soak

clean:          ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# ---- deployment (deploy/, charts/mailexec, tools/image.py) ----
IMAGE ?= localhost/mailexec:dev
LOCAL_BASE ?= localhost/mailexec-base:bookworm
COMPOSE ?= $(shell if docker compose version >/dev/null 2>&1; then echo "docker compose"; \
             elif command -v podman-compose >/dev/null; then echo podman-compose; \
             else echo "docker compose"; fi)

.PHONY: image image-deps image-local image-check image-push compose-up chart-lint

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

# The image a cluster pulls (the chart's image.registry/repository/tag; deploy/README.md).
# TAG defaults to the chart's appVersion, which is also the chart's default image.tag.
TAG ?= $(shell sed -n 's/^appVersion: *"*\([^"]*\)"*$$/\1/p' charts/mailexec/Chart.yaml)
image-push:     ## push $(IMAGE) to $(REGISTRY)/mailexec:$(TAG) with podman (REGISTRY=host[:port][/path]; TLS_VERIFY=false: plain http)
	@test -n "$(REGISTRY)" || { echo "usage: make image-push REGISTRY=host[:port][/path] [TAG=$(TAG)] [TLS_VERIFY=false]"; exit 2; }
	podman tag $(IMAGE) $(REGISTRY)/mailexec:$(TAG)
	podman push --tls-verify=$(if $(filter false,$(TLS_VERIFY)),false,true) $(REGISTRY)/mailexec:$(TAG)
	@echo "helm: --set image.registry=$(firstword $(subst /, ,$(REGISTRY))) --set image.repository=$(patsubst $(firstword $(subst /, ,$(REGISTRY)))/%,%,$(REGISTRY)/mailexec) --set image.tag=$(TAG)"

compose-up:     ## the whole pipeline in containers (deploy/compose.yaml), health-gated
	MAILEXEC_IMAGE=$(IMAGE) $(COMPOSE) -f deploy/compose.yaml up -d --build --wait
	@echo "console :8029  ingest :8025  policy :8026  notifier :8027  executor metrics :8028  DSNs (mailpit) :8030  RabbitMQ UI :15672"

chart-lint: $(STAMP) ## helm lint (Helm's Go SDK), Kubernetes schema validation, chart docs up to date
	$(BIN)/python deploy/chart_lint.py

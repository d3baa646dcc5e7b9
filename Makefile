# llmjobs: the README's commands.
#   make run    create .venv, install, migrate SQLite, start simulator (no key) + app
#   make test   run the whole test suite
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
STAMP := $(VENV)/.installed-stamp

# The first interpreter that runs and is Python >= 3.12 (pyenv shims may exist but fail).
PYTHON_CANDIDATES := python3.13 python3.12 python3 python
PYTHON_FOR_VENV := $(shell for c in $(PYTHON_CANDIDATES); do \
	if $$c -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; then \
	echo $$c; break; fi; done)

.PHONY: help install run test test-postgres lint bench sim worker check-python clean

help:
	@echo "make run    - install into .venv, migrate, start the app (and the simulator when no ANTHROPIC_API_KEY)"
	@echo "make test   - run the whole test suite (2 pytest-xdist workers; PYTEST_WORKERS=0: one process)"
	@echo "make lint   - ruff check, ruff format --check, mypy"
	@echo "make bench  - run the benchmarks (prints tables)"
	@echo "make sim    - run the Anthropic API simulator alone on :8765"
	@echo "make worker - run a background worker (recover_jobs, then db_worker)"

check-python:
	@if [ -z "$(PYTHON_FOR_VENV)" ]; then \
		echo "error: llmjobs needs Python 3.12 or newer, and none of '$(PYTHON_CANDIDATES)' is." >&2; \
		echo "Install Python 3.12+ (for example 'pyenv install 3.12' or 'apt-get install python3.12 python3.12-venv') and run make again." >&2; \
		exit 1; \
	fi

$(STAMP): requirements.txt requirements-dev.txt | check-python
	@if [ -x $(PY) ] && ! $(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then \
		echo "Existing $(VENV) is older than Python 3.12; recreating it."; rm -rf $(VENV); fi
	@[ -x $(PY) ] || $(PYTHON_FOR_VENV) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

install: $(STAMP)

run: install
	DEBUG=$${DEBUG:-1} $(PY) manage.py migrate --noinput
	DEBUG=$${DEBUG:-1} LLMJOBS_WEBHOOK_ALLOW_PRIVATE=$${LLMJOBS_WEBHOOK_ALLOW_PRIVATE:-1} exec $(PY) manage.py serve --host $(HOST) --port $(PORT)

# Two pytest-xdist workers: most of the suite waits on subprocesses, servers and the
# simulator, so two workers share the 2 cores well. Each worker has its own simulator,
# live app, test database and tmp dirs. PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2
PYTEST_ARGS ?= --durations=15
XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),-p no:xdist,-n $(PYTEST_WORKERS) --dist worksteal)
test: install
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy llmjobs project

# The database-facing tests again on PostgreSQL (what a multi-machine team runs).
# The files with real worker processes come first, so the two workers do not end on one of them.
PG_URL ?= postgres://postgres@127.0.0.1:5432/test
PG_TESTS := tests/test_fairness.py tests/test_scale.py tests/test_org_governor.py tests/test_durability.py \
	tests/test_commands.py tests/test_models.py tests/test_jobs.py tests/test_runner.py tests/test_security.py \
	tests/test_api.py tests/test_quotas.py tests/test_cost.py tests/test_filling.py
test-postgres: install
	DATABASE_URL=$(PG_URL) $(PY) -m pytest $(XDIST) $(PYTEST_ARGS) $(PG_TESTS)

BENCH_RESULTS ?= $(CURDIR)/.bench-results.jsonl
# bench/scale.py creates a fresh database per row from this one (it says so and skips without PostgreSQL).
BENCH_PG_URL ?= postgres://postgres@127.0.0.1:5432/postgres
bench: install
	@rm -f $(BENCH_RESULTS)
	export LLMJOBS_BENCH_RESULTS=$(BENCH_RESULTS); set -e; \
	$(PY) bench/simulator.py; \
	$(PY) bench/engine.py; \
	$(PY) bench/limits.py; \
	$(PY) bench/perf.py; \
	$(PY) bench/runner.py; \
	$(PY) bench/submit.py; \
	$(PY) bench/faults.py; \
	$(PY) bench/cost.py; \
	$(PY) bench/org_limits.py --pg-url $(PG_URL); \
	$(PY) bench/web.py; \
	$(PY) bench/scale.py --pg-url $(BENCH_PG_URL); \
	$(PY) bench/summary.py

worker: install
	$(PY) manage.py recover_jobs
	exec $(PY) manage.py db_worker --no-reload

sim: install
	$(PY) -m llmjobs.simulator --host $(HOST) --port 8765

clean:
	rm -rf $(VENV) .pytest_cache db.sqlite3 db.sqlite3-wal db.sqlite3-shm

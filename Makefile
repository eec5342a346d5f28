# Two entry points for a fresh clone (Python 3.11, pip, git, make):
#   make serve   install, then run `resonate serve` on the embedded SQLite default (:8001)
#   make test    install with test dependencies, then run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PACKAGES := -e core -e plugins/store_sqlite -e plugins/store_postgres -e plugins/health -e plugins/transport_poll -e plugins/transport_http -e plugins/metrics
STAMP := $(VENV)/.installed

.PHONY: install serve dev test lint format clean interop-setup interop monitoring-setup bench

$(STAMP): pyproject.toml core/pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q $(PACKAGES) -e '.[test]'
	touch $@

install: $(STAMP)

serve: install
	$(VENV)/bin/resonate serve $(ARGS)

dev: install
	$(VENV)/bin/resonate dev $(ARGS)

interop-setup:
	bash tests/interop/setup.sh

monitoring-setup:
	bash tests/monitoring/setup.sh

bench: install interop-setup
	$(PY) -m bench $(ARGS)

interop: install interop-setup
	$(PY) -m pytest tests/interop $(PYTEST_ARGS)

# The whole suite on SQLite (it also starts throwaway PostgreSQL clusters for the
# PostgreSQL-specific tests), then the store-independent suites again on PostgreSQL.
PG_SUITES := tests/conformance tests/differential tests/interop tests/test_concurrency.py tests/test_lifecycle.py \
	tests/test_health.py tests/test_metrics.py tests/test_restart_runbook.py

test: install interop-setup monitoring-setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)
	$(PY) -m pytest --store postgres $(PG_SUITES) $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .interop tests/interop/ts/node_modules

# Two entry points for a fresh clone (Python 3.11, pip, git, make):
#   make serve   install, then run `resonate serve` on the embedded SQLite default (:8001)
#   make test    install with test dependencies, then run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PACKAGES := -e core -e plugins/store_sqlite -e plugins/store_postgres -e plugins/health -e plugins/transport_poll -e plugins/transport_http
STAMP := $(VENV)/.installed

.PHONY: install serve dev test lint format clean

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

test: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

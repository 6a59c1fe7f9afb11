# Two commands set everything up: `make demo` runs the portal, `make test` runs every check.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTHON ?= $(shell for p in python3.11 python3.12 python3; do \
	if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))'; then \
	echo $$p; break; fi; done)

.PHONY: install check test test-embedded demo schema soak clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 or 3.12 is required (the embedded database ships wheels for those)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m migrations.lint
	$(BIN)/python -m portal.schema_compat

test: check
	$(BIN)/pytest

# The same code on embedded PostgreSQL and Redis, as on a machine that has neither: the local
# defaults are pointed at a closed port so nothing answers there.
test-embedded: $(STAMP)
	PORTAL_LOCAL_DATABASE_URL=postgresql://postgres@127.0.0.1:9/portal \
	PORTAL_LOCAL_REDIS_URL=redis://127.0.0.1:9/0 \
	$(BIN)/pytest -q tests/graphql/test_tenancy.py tests/integration/test_ingestion.py \
		tests/integration/test_http.py tests/integration/test_migrations.py

demo: $(STAMP)
	$(BIN)/portal demo

# Ten minutes of the whole stack as separate processes under load and faults (bench/soak.py).
soak: $(STAMP)
	$(BIN)/python bench/soak.py --minutes 10

schema: $(STAMP)
	$(BIN)/portal export-schema

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

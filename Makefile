# The two set-up commands of the README: `make run` (the main job) and `make test` (the suite).
# Each creates the virtualenv and installs the project on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-services test-all lint bench clean

# constraints.txt pins torch to the CPU build and the releases known to work together
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/llmops run

test: $(STAMP)
	$(BIN)/pytest

# containers, Postgres and the UI in a browser: system packages, root and minutes (.ci/system provides them in CI)
test-services: $(STAMP)
	$(BIN)/pytest -m 'container or postgres or browser'

test-all: $(STAMP)
	$(BIN)/pytest -m ''

# style (ruff) and the layering contracts (import-linter, configured in pyproject.toml); .ci/run runs it before the tests
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf llmops-store .llmops-cache

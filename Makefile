# The two commands a fresh machine needs: `make run` and `make test`.
SHELL := /bin/bash
VENV := .venv
export HF_HUB_OFFLINE := 1

.PHONY: setup run test test-fast check lint typecheck clean

setup:
	bash scripts/setup.sh

## Set up (if needed) and start the whole embedded stack: Milvus Lite, vLLM on CPU, API + UI.
run: setup
	$(VENV)/bin/kb up

## The whole test suite: unit, integration and end-to-end (starts vLLM and the API).
test: setup
	$(VENV)/bin/python -m pytest -q -rs tests

## Unit and integration tests only (no servers).
test-fast:
	$(VENV)/bin/python -m pytest -q -rs tests/unit tests/integration

check: lint typecheck

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck:
	$(VENV)/bin/mypy

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache

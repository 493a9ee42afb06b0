PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bootstrapped

.PHONY: demo test test-unit lint typecheck bench clean

$(STAMP): pyproject.toml tools/bootstrap.sh
	PYTHON=$(PYTHON) tools/bootstrap.sh $(VENV)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edgeward demo

test: lint
	$(BIN)/python -m pytest -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/pipeline.py
	$(BIN)/python benchmarks/uplink.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache build src/*.egg-info

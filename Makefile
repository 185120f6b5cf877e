# Every target sets up what it needs on a fresh machine (a .venv with the CPU build of torch).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

.PHONY: install demo test lint bench
install: $(BIN)/python
	$(PIP) -e ".[test,demo]"

demo: install
	$(BIN)/python -m pytorch_pruner.demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(PIP) -e ".[dev]"
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy src/pytorch_pruner --ignore-missing-imports

bench: install
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/selection.py

# The two commands: `make demo` runs the whole job on a synthetic world; `make test` passes the tests.
# `make lint` is the quality gate CI runs before the tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo-out
PYTEST_ARGS ?=

.PHONY: demo test setup system bench clean-db lint

demo: setup
	$(BIN)/monitor demo --out $(DEMO_OUT)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff (pyflakes, bugbear, import order, docstrings, imports at the top), mypy, and the import layers.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

setup: system $(VENV)/.installed

system:
	@bash scripts/system-deps.sh

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,lint]'
	@touch $@

bench: setup
	$(BIN)/python -m bench

clean-db:
	-$(BIN)/monitor db stop
	rm -rf .monitor/pg

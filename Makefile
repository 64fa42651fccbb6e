# One command sets up and runs the demo; one sets up and runs the tests.
# Two install levels, each with its own stamp file: the demo needs only the package itself; the
# tests (and the copick demo) need the dev and copick extras too. The full level builds on the base
# one, so `make demo` then `make test` adds the extras, and a change to pyproject.toml or
# constraints.txt redoes both.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BASE_STAMP := $(VENV)/.installed-base
FULL_STAMP := $(VENV)/.installed-dev-copick
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt

.PHONY: setup setup-demo demo demo-tomo demo-copick test lint clean

$(BASE_STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(FULL_STAMP): $(BASE_STAMP)
	$(BIN)/pip install -q -e '.[dev,copick]'
	touch $@

setup-demo: $(BASE_STAMP)

setup: $(FULL_STAMP)

demo: setup-demo
	bash scripts/demo.sh

demo-tomo: setup-demo
	bash scripts/demo_tomograms.sh

demo-copick: setup
	bash scripts/demo_copick.sh

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) demo_out demo_tomo_out demo_copick_out .pytest_cache

# One command sets up and runs the demo; one sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt

.PHONY: setup demo demo-tomo demo-copick test lint clean

$(BIN)/cryoal: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,copick]'
	touch $(BIN)/cryoal

setup: $(BIN)/cryoal

demo: setup
	bash scripts/demo.sh

demo-tomo: setup
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

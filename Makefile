# Two entry points, both starting from a fresh clone:
#   make demo   set up .venv, run the examples against every backend available here, print the summary table
#   make test   set up .venv, run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.pytest-deploy-installed

.PHONY: setup demo test clean

$(STAMP): pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python -m pytest examples -rfEsx --deploy-report=deploy-report.json

test: setup
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) .pytest_cache deploy-report.json *.egg-info

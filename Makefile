# Two entry points, both starting from a fresh clone:
#   make demo   set up .venv, run the examples against every backend available here, print the summary table
#   make test   set up .venv, run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.pytest-deploy-installed
# pytest-xdist workers for make test (every backend of a model test runs on one worker); JOBS=0 runs serially
JOBS   ?= 2

.PHONY: setup demo test lint hf-corpus hf-corpus-fp16 hf-inferred libs-corpus clean

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
	$(BIN)/python -m pytest tests -rs -n $(JOBS) --durations=10

# ruff (lint and import order) and mypy (types of the pytest_deploy package), configured in pyproject.toml
lint: setup
	$(BIN)/ruff check pytest_deploy tests benchmarks examples
	$(BIN)/mypy

# every architecture of the Hugging Face corpus against every backend (CI runs a subset); writes the matrix
hf-corpus: setup
	PYTEST_DEPLOY_HF=all $(BIN)/python -m pytest tests/hf -n 2 --deploy-report=hf-report.json --deploy-no-cache -rfE; \
	status=$$?; $(BIN)/python tests/hf/matrix.py hf-report.json --write docs/hf-corpus.md; exit $$status

# every architecture on onnx converted to float16, with the fp16 declared defects; writes the fp16 table
hf-corpus-fp16: setup
	PYTEST_DEPLOY_HF=all PYTEST_DEPLOY_HF_PRECISION=fp16 $(BIN)/python -m pytest tests/hf -n 2 --deploy-report=hf-fp16-report.json --deploy-no-cache -rfE; \
	status=$$?; $(BIN)/python tests/hf/matrix.py hf-fp16-report.json --fp16 --write docs/hf-corpus.md; exit $$status

# every architecture of the corpus with inputs inferred (--deploy-model) against its hand-written declaration;
# prints the verdicts side by side (docs/zero-code.md)
hf-inferred: setup
	$(BIN)/python tests/hf/compare_inferred.py

# every model of the corpus beyond transformers (tests/libs) against every backend, serially (CI runs a subset);
# writes the matrix
libs-corpus: setup
	PYTEST_DEPLOY_LIBS=all $(BIN)/python -m pytest tests/libs --deploy-report=libs-report.json --deploy-no-cache -rfEx; \
	status=$$?; $(BIN)/python tests/libs/matrix.py libs-report.json --write docs/libs-corpus.md; exit $$status

clean:
	rm -rf $(VENV) .pytest_cache deploy-report.json hf-report.json hf-declared.json hf-inferred.json hf-declared.log hf-inferred.log libs-report.json *.egg-info

# Two entry points a user needs: `make demo` (set up + train on the embedded synthetic data) and
# `make test` (set up + run the test suite). Both create or reuse .venv.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build by default. GPU users: make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PIP_QUIET ?= -q
# pipefail: a failing pip fails the target; the filter only hides harmless mirror-config warnings.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
FILTER := { grep -v "^WARNING: Location" || true; }

.PHONY: setup demo test test-all lint bench-smoke clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_QUIET) --upgrade pip 2>&1 | $(FILTER)
	$(PY) -m pip install $(PIP_QUIET) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)" numpy 2>&1 | $(FILTER)
	$(PY) -c "import torch"
	$(PY) -m pip install $(PIP_QUIET) -e ".[dev]" 2>&1 | $(FILTER)
	$(PY) -c "import medunet, monai, mlflow, pydicom"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m monai.bundle run training --config_file bundles/ct_organs/train.json

test: setup
	$(PY) -m pytest -n 2 --dist loadgroup -m "not slow"

test-all: setup
	$(PY) -m pytest -n 2 --dist loadgroup

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

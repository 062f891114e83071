# Two commands for a new user: `make demo` (set up + run the whole loop on simulated data)
# and `make test` (set up + run the test suite). Both create .venv from pyproject.toml first.
VENV ?= .venv
PY := $(VENV)/bin/python
SHELL := /bin/bash
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export BENTOML_DO_NOT_TRACK := true
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false
export SPARK_LOCAL_IP := 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(VENV))/bin/python

.PHONY: venv demo test lint bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip uv
	$(VENV)/bin/uv pip install --quiet --python $(PY) -e '.[dev]'
	touch $@

demo: venv
	$(VENV)/bin/engage demo

test: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q --ignore=tests/integration/test_service_bento.py
	# BentoML binds its model store at first import, once per process: the Bento build tests get their own
	$(VENV)/bin/pytest -q tests/integration/test_service_bento.py

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

bench: venv
	for script in features simulate train offers score; do $(PY) benchmarks/$$script.py || exit 1; done

clean:
	rm -rf demo mlflow.db mlruns mlartifacts .pytest_cache

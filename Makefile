# Two commands: `make quickstart` trains the offline news16 teacher and distils a student, `make test` runs the tests.
# Both bootstrap an idempotent .venv (CPU torch from the wheel on disk) and reuse it afterwards.
SHELL := /bin/bash
NEWS_DATA_DIR ?= $(abspath ../shared/data)
export NEWS_DATA_DIR
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -m "not slow and not gpu and not macos"

.PHONY: quickstart test test-all lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	# torch first and pinned: the CPU build on disk; a bare `torch` would pull a CUDA build.
	set -o pipefail; $(PY) -m pip install -q torch==2.13.0 2>&1 | { grep -v "^WARNING: Location" || true; }
	set -o pipefail; $(PY) -m pip install -q -e ".[dev]" 2>&1 | { grep -v "^WARNING: Location" || true; }
	touch $(STAMP)

# The offline news16 teacher (about 10 min on 2 cores), then a student distilled from it (about 4-6 min + exports).
quickstart: $(STAMP)
	$(PY) -m recipes fit --config news16_cpu.yaml
	$(PY) -m recipes fit --config news16_distill_cpu.yaml

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -m "not gpu and not macos"

lint: $(STAMP)
	$(VENV)/bin/ruff check recipes lightning_modules callbacks export tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf tb_logs .cache

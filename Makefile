# Two commands: `make quickstart` runs the offline news16 pipeline (pretrain, student, exports), `make test` the tests.
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

# The offline news16 pipeline on 2 cores: masked-LM pretraining of the student's encoder (about 8 min), the student
# with its linear teacher and every export (about 8 min), then one table of every model beside the linear baseline.
quickstart: $(STAMP)
	$(PY) -m recipes fit --config news16_pretrain_cpu.yaml
	$(PY) -m recipes fit --config news16_distill_cpu.yaml
	$(PY) -m recipes summary tb_logs/news16_pretrain_cpu/latest tb_logs/news16_distill_cpu/latest \
		--out tb_logs/quickstart_summary

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -m "not gpu and not macos"

lint: $(STAMP)
	$(VENV)/bin/ruff check recipes lightning_modules callbacks export tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf tb_logs .cache

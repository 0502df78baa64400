PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo dev test lint bench clean

# The venv is (re)built when missing or when the dependency files change.
$(STAMP): pyproject.toml setup.cfg constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0 'numpy<2'
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

# moto S3 + MLflow + tritonserver on loopback until Ctrl-C; prints the export lines to paste.
dev: $(STAMP)
	$(VENV)/bin/mlflow-triton dev

# Three workers, one test file each at a time, on this 2-core machine: the suite waits on
# servers (loads, lease TTLs, timeouts) as much as it computes. With two, the CPU was busy 63%
# of a 19-minute run (/usr/bin/time: 125% of 200%); a third worker fills those waits.
test: $(STAMP) lint
	$(PY) -m pytest -n 3 --dist loadfile

# Layers (import-linter's contracts in pyproject.toml) and ruff: CI fails when a layer is crossed.
lint: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check mlflow_triton lightning_callbacks tests benchmarks examples

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info

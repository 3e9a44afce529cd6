# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= work_dirs/demo

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 'setuptools<81' wheel
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) benchmarks/speedup.py --preset demo --work-dir $(DEMO_DIR) --out $(DEMO_DIR)/speedup.json

clean:
	rm -rf $(VENV) work_dirs

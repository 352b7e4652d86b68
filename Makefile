# Set-up and the everyday commands. Every target creates .venv and installs the project first.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mrcnn-installed

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.cu csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)" setuptools wheel ninja numpy
	$(PY) -m pip install --quiet --no-build-isolation -e ".[test,export]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) demo.py $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/ops.py
	$(PY) benchmarks/inference.py

clean:
	rm -rf build mrcnn/_C*.so *.egg-info

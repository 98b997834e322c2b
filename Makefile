# Two commands take a fresh clone to a condensed dataset and a green test suite:
#   make demo   condense the embedded MNIST subset and compare it with random real images
#   make test   run the test suite, then its forced_isa tests again with a narrower instruction set
#               forced (tests/forced_isa.py, docs/testing.md)
# make test-slow runs the scenario tests (marked slow: kills, multi-node, jobs end to end); CI runs both.
# Both create .venv when missing and reinstall only when pyproject.toml or constraints.txt change.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo

.PHONY: demo test test-slow bench install lock clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) jobs/demo.py --output $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -m "not slow"
	$(PY) tests/forced_isa.py

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

# Speed measurements (minutes; JSON in benchmarks/results/). Not part of the tests.
bench: $(STAMP)
	$(PY) benchmarks/matching.py
	$(PY) benchmarks/roofline.py
	$(PY) benchmarks/scaling.py
	$(PY) benchmarks/precision.py

# Refresh the exact tested set after changing the ranges in pyproject.toml.
lock: $(STAMP)
	{ sed -n '1,3p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^idc-ray'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) runs .pytest_cache

# The two commands of the README. Each creates or updates .venv itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint venv clean

venv: $(STAMP)

# Reinstall only when the pins or the package metadata change.
$(STAMP): requirements.txt setup.cfg setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# Byte-compiled once here: where PYTHONDONTWRITEBYTECODE is set (as in CI), every process the
# tests and the demo start (runs, DataLoader workers' parents, subprocess CLIs) would compile the
# sources again (0.4 s each on a 2-core Zen 1 EPYC).
COMPILE := $(PY) -m compileall -q dait_cache cli benchmarks > /dev/null

demo: $(STAMP)
	$(COMPILE)
	$(VENV)/bin/dait-cache demo

# Lint first: a formatting slip fails in seconds, not after the whole suite.
test: lint
	$(COMPILE)
	$(PY) -m pytest -q --durations=15

# Everything but the tests marked slow (end-to-end runs, the fault suite).
test-fast: $(STAMP)
	$(COMPILE)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) dait-work .pytest_cache

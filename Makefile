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

# The suite in TEST_JOBS processes of one thread each. Much of it waits on single-threaded work
# (a subprocess importing torch, a spawned run starting up) that leaves a core idle when tests run
# one at a time; two threads per test on top would make OpenMP's threads spin against each other.
# On 2 cores of a Zen 1 EPYC, in a clean clone: pytest 536-538 s (318 tests), against 818 s one at a
# time; 460 and 478 s for 323 tests on 2026-12-06 (make test with the install: 630 and 652 s). On 2
# cores of a Zen 3 EPYC: pytest 291 s, make test with the install 408 s (323 tests, 2026-12-06);
# pytest 346 s, make test with the install 478 s (412 tests, 2026-12-07); pytest 355 s, make test
# with the install 479 s (496 tests, 2026-12-07, later that day); pytest 392 s, make test with the
# install 538 s (511 tests, the same day); pytest 342 s, make test with the install 445 s (540
# tests, the same day, at d62cd86); pytest 326 s, make test with the install 435 s (544 tests, at
# b0bd3f5).
TEST_JOBS ?= 2
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_JOBS)

# Lint first: a formatting slip fails in seconds, not after the whole suite.
test: lint
	$(COMPILE)
	$(PYTEST) --durations=15

# Everything but the tests marked slow (end-to-end runs, the fault suite).
test-fast: $(STAMP)
	$(COMPILE)
	$(PYTEST) -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) dait-work .pytest_cache

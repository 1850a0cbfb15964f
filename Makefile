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
# In a clean clone, 2 cores: pytest 536-538 s (318 tests) on a Zen 1 EPYC against 818 s one at a
# time; lately pytest 500-551 s, make test with the install 654-720 s on the Zen 1 (586 tests,
# 2026-12-07: at d3d5309 and c278e45, and at 4919fad started as `(make test &)`, so with Ctrl-C
# ignored; 595 tests at 57139f5: pytest 531 s, make test 697 s), and pytest 326-392 s, make
# test 435-538 s on a Zen 3 EPYC (511-544 tests, that day); 610 tests at 9cb9a75 on a Zen 5 EPYC
# (CPU family 26, AVX512 kernels): pytest 370 s, make test 476 s; 618 at 8821a72: 314 s, 394 s;
# 635 at 8c31374 on a Xeon (family 6, model 167, AVX512 kernels): 304 s, 396 s; 645 at 5bd797a
# and 646 at 714abaf there: 279 s, 362 s and 348 s, 435 s; 648 at 82d8d1d and 367359d: 418 s,
# 521 s and 385 s, 501 s, and at 125a6e7: 408 s, 526 s (the same Xeon, slower that hour); at
# e2481f5 (temporary files at most 1329 MB, sampled every 2 s; 17.4 GB before): 316 s, 414 s.
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

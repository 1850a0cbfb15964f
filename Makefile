# The two commands of the README. Each creates or updates .venv itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint venv clean

venv: $(STAMP)

# pip's own "No space left on device" comes minutes in, after a half-built .venv: say it first.
VENV_GIB ?= 6.5
DISK_CHECK := import shutil, sys; free = shutil.disk_usage(".").free / 2**30; \
	sys.exit(0 if free >= $(VENV_GIB) else f"make: {free:.1f} GiB free on this disk, and .venv \
	needs about $(VENV_GIB) GiB (torch 2.14.1 is its CUDA build): free some disk, then run make again")

# Reinstall only when the pins or the package metadata change.
$(STAMP): requirements.txt setup.cfg setup.py pyproject.toml
	@ls -d $(VENV)/lib/python*/site-packages/torch > /dev/null 2>&1 || $(PYTHON) -c '$(DISK_CHECK)'
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
# Measured in clean clones on 2 cores (pytest / make test with the install):
#   Zen 1 EPYC: 318 tests 536-538 s (818 s one test at a time); 586-595 tests 500-551 / 654-720 s
#   Zen 3 EPYC: 511-544 tests 326-392 / 435-538 s
#   Zen 5 EPYC (family 26, AVX512 kernels): 610-618 tests 314-370 / 394-476 s
#   Xeon (family 6, model 167, AVX512 kernels): 635-660 tests 258-418 / 322-526 s; at e2481f5
#   316 / 414 s, its temporary files at most 1329 MB (sampled every 2 s; 17.4 GB kept before);
#   656 tests at 06bb45f: 338 / 432 s, at most 1215 MB; 659 at b7dc4af: 258 / 322 s, 1263 MB;
#   660 at 86036e5: 271 / 346 s, 1263 MB; 672 at 2ff9a65: 308 / 386 s, 1172 MB;
#   675 at d3a048e: 333 / 410 s, 1306 MB; 675 at d900196: 293 / 374 s, 1263 MB
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

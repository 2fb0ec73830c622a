# Two commands do all the set-up on a fresh machine:
#   make run    start the router on the shipped NS8 examples (embedded Redis, nothing to set up)
#   make test   the whole suite: pytest, ruff, mypy --strict, the example route tests
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
# make test fails when the total coverage drops below this: a few points under the 94.5 %
# measured when it was set (docs/testing.md).
COVERAGE_FLOOR ?= 90
# Test processes: one more than the 2 cores, for the end-to-end tests' waits on servers,
# routers and steps; most tests now run in process and use a core while they run. Measured on
# a subset of 10 files with coverage here (wall): -n 4 was slower than -n 2 twice (96 s and
# 89 s against 84 s and 81 s), -n 3 faster once (78 s against 85 s). Idle workers take tests
# queued for busy ones (--dist worksteal), so the long end-to-end tests do not finish last
# on one worker: 64 s against 74 s and 81 s for the default split, same machine, same hour.
TEST_WORKERS ?= 3
# The node `make run` plays in the shipped examples: their module-removed handler compares
# the event's node with NODE_ID (examples/ns8-cluster/README.md). `NODE_ID=2 make run` plays 2.
NODE_ID ?= 1
# `make run` keeps its state (embedded server socket, lock, failure journal) in the checkout,
# never in the machine-wide default (/run/eventrouter for root), where a router already
# running on the box would make it refuse. Not read from $EVENTROUTER_STATE_DIR, which may
# name a production router's folder; `make run RUN_STATE_DIR=DIR` picks another.
RUN_STATE_DIR ?= $(CURDIR)/.state

.PHONY: help run cluster test lint lock bench clean

# Plain `make` says what the targets are rather than doing one of them.
help:
	@echo "make run      the router on the shipped NS8 examples (embedded Redis, state in .state/)"
	@echo "make test     the whole suite: ruff, mypy --strict, route tests, pytest with coverage"
	@echo "make cluster  three nodes on loopback, one router each, on the same examples"
	@echo "make lint     ruff and mypy only"
	@echo "make lock     refresh uv.lock to the newest releases pyproject.toml allows"
	@echo "make bench    the benchmarks (bench/README.md)"
	@echo "make clean    remove .venv and the caches"

# uv installs the lock; it is bootstrapped into the virtual environment at the version the lock
# pins for it (tests/test_lock.py keeps the two equal), so `uv sync` keeps it there.
UV_VERSION = 0.13.9
UV = UV_PROJECT_ENVIRONMENT=$(VENV) UV_PYTHON_DOWNLOADS=never $(BIN)/uv

# Each slow step says what it does before it starts: on a busy 2-core machine the first
# `make` took 50 s, about 15 s for the venv, 10 s for uv, 15 s for the lock's packages.
$(BIN)/uv:
	@test -x $(BIN)/python || { echo "make: creating the virtual environment $(VENV) with $(PYTHON) (about 15 s)"; $(PYTHON) -m venv $(VENV); }
	@echo "make: installing uv $(UV_VERSION) into $(VENV) with pip (about 10 s)"
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(BIN)/.installed: pyproject.toml uv.lock | $(BIN)/uv
	@echo "make: installing exactly what uv.lock pins into $(VENV) (about 20 s the first time)"
	$(UV) sync --locked --extra dev --python $(BIN)/python
	@# venv's seed packages are not in the lock: setuptools' .pth alone costs every Python
	@# start about 2 ms (its distutils hack). uv, from the lock, does pip's job from here on.
	@$(UV) pip uninstall --quiet --python $(BIN)/python pip setuptools 2>/dev/null || true
	@touch $@

# Refresh the lock to the newest releases pyproject.toml allows; then run `make test`.
lock: | $(BIN)/uv
	$(UV) lock --upgrade --python $(BIN)/python

run: $(BIN)/.installed
	@echo "make: state folder $(RUN_STATE_DIR); for publish, status and the others, in another shell: export EVENTROUTER_STATE_DIR=$(RUN_STATE_DIR)"
	EVENTROUTER_STATE_DIR='$(RUN_STATE_DIR)' NODE_ID=$(NODE_ID) $(BIN)/eventrouter run --routes examples/ns8-cluster/routes.d --events-dir examples/ns8-cluster/events

# Three servers on loopback (a master, two replicas), a stand-in NS8 agent and one router per
# node on the shipped examples (examples/ns8-cluster/README.md); Ctrl-C stops everything.
cluster: $(BIN)/.installed
	$(BIN)/python examples/cluster/run.py

lint: $(BIN)/.installed
	$(BIN)/ruff check eventrouter tests bench examples
	$(BIN)/ruff format --check eventrouter tests bench examples
	$(BIN)/mypy eventrouter

test: lint
	$(BIN)/eventrouter test --routes examples/ns8-cluster/routes.d --events-dir examples/ns8-cluster/events
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal --cov --cov-report=term:skip-covered --cov-fail-under=$(COVERAGE_FLOOR)

# `make bench REF=main~3` runs the benchmarks on that commit beside the working tree instead.
bench: $(BIN)/.installed
	$(if $(REF),$(BIN)/python bench/compare.py $(REF),$(BIN)/python bench/run.py)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info .coverage .coverage.*

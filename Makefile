# pharma-twin: the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LANDING ?= landing
LAKE ?= lakehouse
BATCHES ?= 100
UNITS ?= 6
SEED ?= 42
# batches per unit materialized before the dashboards start (the rest fills in behind them)
FIRST_SLICE ?= 2

.PHONY: demo test lint format bench simulate clean help browser soak
MINUTES ?= 120

help:
	@echo "make demo   - set up, simulate a plant history, materialize its latest batches, serve the dashboards (:8501), fill in the rest, then Dagster (:3000) with the plant running live"
	@echo "make test   - set up, then lint, dg check defs and the whole test suite"
	@echo "make bench  - benchmarks; figures go to docs/benchmarks.md"
	@echo "make soak   - the live demo's services for MINUTES=120 on a small plant: queue, latency, memory over time"
	@echo "make lint   - ruff (lint + format check) and mypy"

# The virtualenv is (re)built when missing or when the pins change: one pip resolve,
# constrained by requirements.lock (installing packages one by one breaks pairs such as
# graphql-core/gql that only one resolve gets right).
$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	@if [ ! -x $(BIN)/python ]; then $(PYTHON) -m venv $(VENV); fi
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check pharma_assets pharma_assets_tests dashboards benchmarks
	$(BIN)/ruff format --check pharma_assets pharma_assets_tests dashboards benchmarks
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format pharma_assets pharma_assets_tests dashboards benchmarks
	$(BIN)/ruff check --fix pharma_assets pharma_assets_tests dashboards benchmarks

# The dashboards' real-browser tests drive Debian's chromium + chromedriver; install them when
# missing and we may (root with apt), else the tests say they were skipped and why.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium and chromium-driver (Debian) for the browser tests"; \
	    apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
	      { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	      echo "note: could not install chromium; the browser tests will be skipped"; \
	  else \
	    echo "note: chromium/chromedriver missing; the browser tests will be skipped (apt-get install chromium chromium-driver)"; \
	  fi; \
	fi

test: lint browser
	$(BIN)/dg check defs
	# the suite's processes build lakes and exit: polars' allocator as in batch processes
	PHARMA_ALLOCATOR=batch $(BIN)/pytest -q -n 2 --dist loadgroup --durations=10

simulate: $(STAMP)
	$(BIN)/pharma-twin simulate --units $(UNITS) --batches $(BATCHES) --seed $(SEED) --out $(LANDING)

demo: $(STAMP)
	@if [ -d $(LANDING)/telemetry ]; then \
	  echo "landing zone $(LANDING)/ already holds a plant history (remove it to simulate a new one)"; \
	else \
	  $(BIN)/pharma-twin simulate --units $(UNITS) --batches $(BATCHES) --seed $(SEED) --out $(LANDING); \
	fi
	PHARMA_LANDING_DIR=$(LANDING) PHARMA_LAKE_URI=$(LAKE) $(BIN)/pharma-twin pipeline --latest $(FIRST_SLICE)
	$(BIN)/python -c "from pharma_assets.demo import demo_promotion_policy as p; print(p('$(LAKE)'))"
	PHARMA_DEMO_BACKFILL=1 PHARMA_DEMO_UNITS=$(UNITS) PHARMA_LANDING_DIR=$(LANDING) PHARMA_LAKE_URI=$(LAKE) PHARMA_GROUND_TRUTH_DIR=ground_truth $(BIN)/python -m pharma_assets.demo

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

# The demo's services on a small temporary plant for MINUTES (default 120), sampled every
# minute; CSV + PNG in /tmp/soak_<time>/ (benchmarks/soak.py states the pass rule).
soak: $(STAMP)
	nice -n 10 $(BIN)/python -m benchmarks.soak --minutes $(MINUTES)

# The demo lake's audit trail is anchored outside the repository (~/.config/pharma-twin).
# Deleting the lake on purpose first retires that anchor, a signed GxP action: the demo admin
# signs with the password pharma_assets/demo.py keeps in .state/demo_logins.txt (mode 0600;
# demo_logins creates the demo accounts if this lake has none yet). The retirement is written
# to the trail and the anchor log, and `audit verify` reports it for the next trail here.
# If the demo admin cannot sign, nothing is deleted (docs/compliance.md, section 4).
clean:
	@if [ -x $(BIN)/pharma-twin ] && [ -d $(LAKE)/gxp/audit_trail ]; then \
	  $(BIN)/python -c "from pharma_assets.demo import demo_logins; demo_logins('$(LAKE)')" >/dev/null && \
	  awk -F'\t' '$$1 == "admin" {print $$3}' .state/demo_logins.txt | \
	  $(BIN)/pharma-twin audit retire-anchor --lake $(LAKE) --admin admin --yes \
	    --reason "make clean removed the demo lake" || { \
	  echo "make clean: the demo admin could not sign the retirement of $(LAKE)'s audit trail; nothing was deleted. Retire it yourself: $(BIN)/pharma-twin audit retire-anchor --lake $(LAKE) --admin <admin ID> --yes --reason '...'" >&2; exit 1; }; fi
	rm -rf $(LANDING) $(LAKE) ground_truth .state .pytest_cache

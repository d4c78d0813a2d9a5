# gridtower: `make demo` runs a whole production on the embedded default;
# `make test` starts the services the tests need and runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test fuzz faults bench install lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/demo.sh

# tests wait on towers, pilots and batch systems far more than they compute: TEST_WORKERS=3
# runs them in three processes (about 10 minutes instead of 20 on two cores), but timing
# tests then flake on a loaded machine (TLS keep-alive EOFs, a destination's return), so
# the default is one process; the few that restart a shared service run alone afterwards
TEST_WORKERS ?= 0
test: install
	scripts/services.sh
	$(BIN)/pytest -q --durations=20 -n $(TEST_WORKERS) --dist loadgroup -m 'not faults_long and not serial'
	$(BIN)/pytest -q -m serial

# the API fuzzed from its OpenAPI document (tests/security), with a large budget
fuzz: install
	scripts/services.sh
	GRIDTOWER_FUZZ_EXAMPLES=$${GRIDTOWER_FUZZ_EXAMPLES:-500} $(BIN)/pytest -q --timeout=3600 tests/security

# the fault suite's long scenarios (tests/faults/), each FAULT_RUNS times with new seeds;
# prints the table of runs, faults injected and ledger results, and writes faults-report.md
FAULT_RUNS ?= 3
faults: install
	scripts/services.sh
	FAULT_RUNS=$(FAULT_RUNS) $(BIN)/pytest -q -m faults_long tests/faults

# the suite of bench/suite.py: gridtower beside Celery and Parsl (installed into their own
# venv), the machine's ceilings, SLURM, a million-job production; writes bench/results/
bench: install
	scripts/services.sh
	bench/peers-venv.sh
	$(BIN)/python bench/suite.py

lint: install
	$(BIN)/pip install --quiet ruff mypy
	$(BIN)/ruff check .
	$(BIN)/mypy tower pilots sites transfer catalog web

clean:
	rm -rf $(VENV) demo-home *.egg-info

# The two commands of the README: `make run` (the whole pipeline) and `make test` (the test suite).
VENV ?= .venv
export HF_HUB_OFFLINE ?= 1
# pytest-xdist workers: two fill a 2-core machine (tests/conftest.py keeps Ray tests on one, long modules first).
WORKERS ?= 2

.PHONY: setup run test test-fast bench clean

setup:
	@OWL_VENV=$(VENV) scripts/setup.sh

run: setup
	$(VENV)/bin/owl run

test: setup
	$(VENV)/bin/python -m pytest -q -n $(WORKERS) --durations=15

# The inner loop: every test but those marked slow (Ray, DVC repro, pretraining, servers); CI runs them all.
test-fast: setup
	$(VENV)/bin/python -m pytest -q -n $(WORKERS) -m "not slow" --durations=15

bench: setup
	$(VENV)/bin/python bench/model_step.py

clean:
	rm -rf assets/* mlruns .pytest_cache

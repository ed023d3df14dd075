# The two commands of the README: `make run` (the whole pipeline) and `make test` (the test suite).
VENV ?= .venv
export HF_HUB_OFFLINE ?= 1

.PHONY: setup run test bench clean

setup:
	@OWL_VENV=$(VENV) scripts/setup.sh

run: setup
	$(VENV)/bin/owl run

test: setup
	$(VENV)/bin/python -m pytest -q

bench: setup
	$(VENV)/bin/python bench/model_step.py

clean:
	rm -rf assets/* mlruns .pytest_cache

# Two commands for a fresh machine (README, "Set up, run, test"):
#   make quickstart   install the package in .venv and run the main job (the quickstart)
#   make test         what CI runs (.ci/run): a fresh .venv, every test dependency, the tests
# Test dependencies are installed by scripts/install-test-deps (add new ones there), the
# test command is scripts/run-tests.

VENV := .venv
PY := $(VENV)/bin/python

.PHONY: quickstart test

$(PY):
	python3 -m venv $(VENV)

quickstart: $(PY)
	$(PY) -m pip install --quiet -e .
	$(PY) -m keras_mgc.train --recipe recipes/quickstart.yaml

test:
	.ci/run

# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-test bench soak

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Stamps: pip runs again only when pyproject.toml changed (or the venv is new), not every `make demo`.
install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: install
	$(BIN)/defender-forwarder run --once --config examples/demo.toml

# Two workers (pytest-xdist), a test file each at a time: the suite's subprocesses and peers
# wait on I/O as much as they compute.
test: install-test
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: install-test
	$(BIN)/python bench/normalise.py
	$(BIN)/python bench/poll.py
	$(BIN)/python bench/idle.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/ship_syslog.py
	$(BIN)/python bench/ship_hec.py
	$(BIN)/python bench/ship_elastic.py
	$(BIN)/python bench/ship_eventhub.py
	$(BIN)/python bench/ship_sentinel.py
	$(BIN)/python bench/ship_splunk_modinput.py

# About 20 minutes: tests/reliability at full scale, then 1,000 tenants and 1,000,000 alerts.
soak: install-test
	$(BIN)/python bench/soak.py --reliability

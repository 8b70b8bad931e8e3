# Two commands for a newcomer: `make demo` and `make test`. Both start with `make install`.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $@

demo: install
	$(BIN)/edgeclf demo

# Two test processes, each file in one of them (module fixtures are built once). On 2 cores the
# suite took 20 min in one process and 11 in two: conversion and start-up are mostly single-threaded.
test: install
	bash tests/install_metadata_reader.sh $(BIN)/python
	$(BIN)/python -m pytest -n 2 --dist loadfile

clean:
	rm -rf $(VENV) edgeclf-demo .pytest_cache

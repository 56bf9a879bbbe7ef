# voicectl: `make demo` and `make test` are the quick start on a fresh machine.
#
#   make install   create .venv (if missing) and install the pinned lock (constraints.txt), every extra
#   make demo      install, then run the demo on the embedded default (SQLite, offline providers)
#   make test      install, then run the test suite    (extra pytest args: make test PYTEST_ARGS='-k store -x')
#   make bench     install, then run the API benchmark
#   make lint      install, then ruff
#   make clean     remove build/test/demo leftovers (keeps .venv); `make distclean` removes .venv too
#
# The install is skipped while .venv/.installed is newer than pyproject.toml and
# constraints.txt, so repeated runs start at once.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv install demo test bench lint clean distclean

help:
	@sed -n '3,9p' Makefile | sed 's/^# \{0,1\}//'

venv install: $(STAMP)

# The venv itself: made once (also remade if its interpreter is gone or broken).
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Every extra (all: offline, cloud, livekit, s3) and the test tools: the demo and the tests use them all.
# bench/turn_model.py reads the Smart Turn model out of the pipecat-ai wheel (kept, never installed).
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install --quiet -c constraints.txt -e '.[all,test]'
	$(PIP) download --quiet --no-deps -d $(VENV)/extras pipecat-ai==1.14.0
	@touch $@

demo: $(STAMP)
	$(BIN)/voicectl demo --config demo/config.yaml

# Two workers (one per core of the reference box), whole files per worker (module fixtures load once).
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/api.py

lint: $(STAMP)
	$(BIN)/ruff check voicectl runtime tests bench peers examples

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .hypothesis demo artifacts models
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

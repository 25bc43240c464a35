# beambridge: one command runs the benchmark, one runs every test. Both install what is
# missing.
#   make bench  - Bridge.call against ETF over a Port, memcpy and the raw Port floor
#   make test   - pytest, ExUnit and the cross-language tests
#   make demo   - Elixir writes a 64 MiB frame into an arena, Python reads it in place
#   make lint   - formatting, warnings as errors, ruff, mypy, C with -Werror
SHELL := /bin/bash
export MIX_ENV ?= test
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup build test test-python test-elixir test-cross lint bench demo vectors clean

setup:
	@bash .ci/setup

build: setup
	@bash .ci/build-ext
	mix compile

test: build
	$(PY) -m pytest tests/python -q
	mix test
	$(PY) -m pytest tests/cross -q
	@bash .ci/check-shm-clean

test-python: build
	$(PY) -m pytest tests/python -q

test-elixir: build
	mix test

test-cross: build
	$(PY) -m pytest tests/cross -q

lint: setup
	mix format --check-formatted
	mix compile --force --warnings-as-errors
	$(MAKE) -s -C shm lint
	@bash .ci/build-ext --lint
	$(VENV)/bin/ruff check python tests protocol bench elixir/test/handlers
	$(VENV)/bin/ruff format --check python tests protocol bench elixir/test/handlers
	$(VENV)/bin/mypy

bench: build
	mix run bench/run.exs
	taskset -c 0 mix run bench/cpu.exs

demo: build
	mix run bench/demo.exs

vectors: setup
	$(PY) protocol/gen_vectors.py

clean:
	rm -rf _build deps $(VENV) shm/*.o

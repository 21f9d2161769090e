# `make demo` and `make test` set themselves up on a fresh machine: they build .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch must be installed before anything else asks for torch: on these
# machines a bare `torch` requirement resolves to a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-slow lint format bench

setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: setup
	$(PY) -m biogpt demo

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

lint: setup
	$(PY) -m ruff check biogpt tests benchmarks
	$(PY) -m ruff format --check biogpt tests benchmarks

format: setup
	$(PY) -m ruff format biogpt tests benchmarks
	$(PY) -m ruff check --fix biogpt tests benchmarks

bench: setup
	$(PY) benchmarks/tokenizer.py

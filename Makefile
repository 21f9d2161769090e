# `make demo` and `make test` set themselves up on a fresh machine: they build .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch must be installed before anything else asks for torch: on these
# machines a bare `torch` requirement resolves to a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-slow browser postgresql lint format bench mini-model

setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml setup.py biogpt/cpu/_cpu.c biogpt/cpu/products.h biogpt/cpu/step.h
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: setup
	$(PY) -m biogpt demo

test: setup browser postgresql
	$(PY) -m pytest -q

# The web page's test drives Debian's Chromium (never a downloaded browser). Installed here
# where apt-get can (as root); elsewhere that one test skips and says why.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium) \
		>/dev/null 2>&1; } || echo "chromium is not installed: the browser test will skip"

# The mining store's PostgreSQL test starts a throwaway cluster of Debian's server; installed
# here where apt-get can, elsewhere that test skips and says why.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
		command -v apt-get >/dev/null && (apt-get update -qq && apt-get install -y -qq \
		--no-install-recommends postgresql) >/dev/null 2>&1; } || \
		echo "postgresql is not installed: the PostgreSQL store test will skip"

test-slow: setup
	$(PY) -m pytest -q -m slow

lint: setup
	$(PY) -m ruff check biogpt tests benchmarks
	$(PY) -m ruff format --check biogpt tests benchmarks
	$(PY) -m mypy biogpt
	$(PY) tools/check_layers.py

format: setup
	$(PY) -m ruff format biogpt tests benchmarks
	$(PY) -m ruff check --fix biogpt tests benchmarks

bench: setup
	$(PY) benchmarks/tokenizer.py

# The built-in demonstration model (configs/mini.toml): token shards of the shared PubMed
# abstracts without the evaluation sets' test documents, pretraining on this CPU (about half
# an hour on 2 cores), then the fp16 weights into the package as the model `mini`.
SHARED_DATA ?= ../shared/data
mini-model: setup
	mkdir -p runs/mini
	$(PY) -c "from biogpt.corpus.readers import evaluation_test_pmids as t; \
	  open('runs/mini/exclude-test-pmids.txt', 'w').write('\n'.join(sorted(t('$(SHARED_DATA)/pretrain/abstracts.jsonl'))) + '\n')"
	$(PY) -m biogpt binarize --input $(SHARED_DATA)/pretrain/abstracts.jsonl --tokenizer biogpt \
	  --out runs/mini/shards --valid-fraction 0.05 --exclude runs/mini/exclude-test-pmids.txt --workers 1
	$(PY) -m biogpt pretrain --config configs/mini.toml --resume
	$(PY) -m biogpt convert runs/mini/train/checkpoints/$$(cat runs/mini/train/checkpoints/last) \
	  biogpt/models/mini --dtype fp16 --no-tokenizer --overwrite

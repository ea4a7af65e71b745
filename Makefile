# callbridge: `make run` installs and serves (echo bot on http://127.0.0.1:8000); `make test` installs and tests.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pip warns about local index folders some machines configure; those lines are noise. pip's own exit
# status still decides (pipefail); grep finding nothing to print is not a failure.
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: install run test lint bench clean

install: $(STAMP)

# torch is pinned to the CPU build 2.13.0 (see ../shared/testing.md); install it first so nothing
# else pulls a different torch.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "torch==2.13.0" 2>&1 | $(QUIET_PIP)
	$(BIN)/pip install -q -e ".[test,bench]" 2>&1 | $(QUIET_PIP)
	$(BIN)/python -c "import callbridge, torch, onnxruntime"
	touch $@

run: install
	$(BIN)/python -m callbridge

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

# The codec bench, then callbridge and FastRTC side by side at increasing N (~20 min; FastRTC installs itself
# into bench/work/). `make bench BENCH_ARGS=--quick` is a ~3 min smoke run written to bench/work/quick/.
BENCH_ARGS ?=
bench: install
	$(BIN)/python bench/codec_bench.py
	$(BIN)/python bench/run_bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

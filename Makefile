VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup setup-dev run test test-all lint format bench clean

# What running needs (no root, nothing from apt).
setup:
	@scripts/bootstrap

# Also the tests' tools (apt) and the [dev] extra.
setup-dev:
	@scripts/bootstrap --dev

run: setup
	$(BIN)/mediaserver serve

test: setup-dev
	$(BIN)/pytest -q

lint: setup-dev
	$(BIN)/ruff check mediaserver tests bench
	$(BIN)/ruff format --check mediaserver tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

format: setup-dev
	$(BIN)/ruff check --fix mediaserver tests bench
	$(BIN)/ruff format mediaserver tests bench

bench: setup-dev
	$(BIN)/python bench/bench_merge.py --minutes 60
	$(BIN)/python bench/bench_ingest.py
	$(BIN)/python bench/bench_memory.py
	$(BIN)/python bench/bench_rtp_capacity.py
	$(BIN)/python bench/bench_webrtc_capacity.py
	$(BIN)/python bench/bench_agent_path.py
	$(BIN)/python bench/bench_agent_capacity.py
	$(BIN)/python bench/bench_peaks.py --minutes 60
	$(BIN)/python bench/bench_console.py --minutes 60
	$(BIN)/python bench/bench_analysis.py --minutes 60
	$(BIN)/python bench/bench_encryption.py --minutes 60

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

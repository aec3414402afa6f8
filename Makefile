VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test test-all lint format bench clean

setup:
	@scripts/bootstrap

run: setup
	$(BIN)/mediaserver serve

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check mediaserver tests bench
	$(BIN)/ruff format --check mediaserver tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

format: setup
	$(BIN)/ruff check --fix mediaserver tests bench
	$(BIN)/ruff format mediaserver tests bench

bench: setup
	$(BIN)/python bench/bench_merge.py --minutes 60
	$(BIN)/python bench/bench_ingest.py
	$(BIN)/python bench/bench_memory.py
	$(BIN)/python bench/bench_rtp_capacity.py
	$(BIN)/python bench/bench_webrtc_capacity.py
	$(BIN)/python bench/bench_analysis.py --minutes 60

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

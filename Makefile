PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

install: ## Create .venv and install vidseg (editable) with its dev extras
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'

test: ## Run the whole test suite (learning checks included)
	$(BIN)/python -m pytest -n 2 --dist loadgroup tests

test-fast: ## Run the suite without slow tests
	$(BIN)/python -m pytest -n 2 -m "not slow" tests

lint: ## ruff check
	$(BIN)/ruff check src tests scripts notebooks

format: ## ruff format + fix imports
	$(BIN)/ruff check --fix --select I src tests scripts
	$(BIN)/ruff format src tests scripts

bench: ## Run the benchmark scripts (data, JPEG decoding, annotation reading, metrics, model, matcher, inference)
	$(BIN)/python scripts/bench_data.py
	$(BIN)/python scripts/bench_jpeg.py
	$(BIN)/python scripts/bench_reading.py
	$(BIN)/python scripts/bench_metrics.py
	$(BIN)/python scripts/bench_model.py
	@if [ -f scripts/bench_matcher.py ]; then $(BIN)/python scripts/bench_matcher.py; fi
	@if [ -f scripts/bench_inference.py ]; then $(BIN)/python scripts/bench_inference.py; fi
	$(BIN)/python scripts/bench_train_step.py

clean: ## Remove caches and run outputs
	rm -rf .pytest_cache .ruff_cache logs outputs multirun

.PHONY: help install test test-fast lint format bench clean

# Two commands: `make demo` and `make test`. Both bootstrap .venv from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
# On machines that carry the provided copy (CI, this workplace), use it; elsewhere readmit finds or downloads it.
SHARED_DATA := $(abspath ../shared/data/dataset_diabetes.zip)
export READMIT_DATA ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),)
export READMIT_HOME ?= $(abspath .readmit)
export MPLBACKEND := Agg

.PHONY: setup demo test lint clean docs

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip uv
	@$(BIN)/uv pip install -q --python $(BIN)/python -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

setup: $(STAMP)

demo: setup
	$(BIN)/readmit data
	$(BIN)/readmit train --registry --holdout-frac 0.2
	$(BIN)/readmit predict --out $(READMIT_HOME)/predictions.csv
	@echo
	@echo "Model card: $$(ls -d $(READMIT_HOME)/bundles/*/ | tail -1)model_card.md"
	@echo "Predictions: $(READMIT_HOME)/predictions.csv"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/pytest -q

docs: setup
	$(BIN)/readmit features --out docs/features.md

clean:
	rm -rf $(VENV) .readmit .pytest_cache .ruff_cache

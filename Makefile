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

.PHONY: setup tools validate-asl demo test lint clean docs build-ApiFunction lambda-size build-StartTrainingFunction \
	build-CheckTrainingFunction build-PromoteFunction build-RejectFunction build-DriftMonitorFunction
.DEFAULT_GOAL := demo

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip uv
	@$(BIN)/uv pip install -q --python $(BIN)/python -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

setup: $(STAMP)

# Node tools, installed locally into .tools/ (nothing global): asl-validator checks the Step Functions definitions.
TOOLS := .tools
ASL_VALIDATOR_SPEC ?= asl-validator@3
ASL_VALIDATOR := $(TOOLS)/node_modules/.bin/asl-validator
TOOLS_STAMP := $(TOOLS)/.installed-$(shell echo '$(ASL_VALIDATOR_SPEC)' | sha1sum | cut -c1-12)

$(TOOLS_STAMP):
	@command -v npm >/dev/null || { echo "npm (Node.js 18+) is needed for $(ASL_VALIDATOR_SPEC)" >&2; exit 1; }
	@mkdir -p $(TOOLS)
	npm install --prefix $(TOOLS) --no-audit --no-fund --loglevel=error $(ASL_VALIDATOR_SPEC)
	@test -x $(ASL_VALIDATOR)
	@rm -f $(TOOLS)/.installed-*
	@touch $@

tools: $(TOOLS_STAMP)
	@test -x $(ASL_VALIDATOR) || { rm -f $(TOOLS_STAMP); $(MAKE) --no-print-directory $(TOOLS_STAMP); }

# The definitions as written (SAM placeholders are plain strings there); tests/test_statemachine.py also
# validates them with the placeholders substituted, and runs them in moto.
validate-asl: tools
	@for f in statemachines/*.asl.json; do echo "$$f"; $(ASL_VALIDATOR) --json-path "$$f" || exit 1; done

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

test: setup tools lint
	$(BIN)/pytest -q

docs: setup
	$(BIN)/readmit features --out docs/features.md

clean:
	rm -rf $(VENV) $(TOOLS) .readmit .pytest_cache .ruff_cache

# SAM's makefile build (template.yaml: BuildMethod makefile): the API function gets app.py, chalicelib and the
# serving dependencies only (no pandas, no scikit-learn), as Linux wheels. Chalice is needed only for its
# runtime module (no botocore, click or yaml: boto3 comes with the Lambda runtime); test suites are dropped.
LAMBDA_PYTHON ?= 3.12
SERVING_DEPS = numpy xgboost-cpu scipy pydantic aws-lambda-powertools platformdirs prometheus-client
build-ApiFunction:
	cp -r app.py chalicelib "$(ARTIFACTS_DIR)/"
	python3 -m pip install --quiet --no-warn-conflicts --target "$(ARTIFACTS_DIR)" --platform manylinux2014_x86_64 \
		--implementation cp --python-version $(LAMBDA_PYTHON) --only-binary=:all: $(SERVING_DEPS)
	python3 -m pip install --quiet --no-warn-conflicts --no-deps --target "$(ARTIFACTS_DIR)" chalice
	cd "$(ARTIFACTS_DIR)" && rm -rf bin chalice/cli chalice/deploy chalice/templates \
		scipy/*/tests scipy/*/*/tests && find . -name __pycache__ -prune -exec rm -rf {} +

# Unzipped size of the API function package (Lambda's limit: 250 MB).
lambda-size: setup
	rm -rf build/lambda && mkdir -p build/lambda
	$(MAKE) --no-print-directory build-ApiFunction ARTIFACTS_DIR=$(abspath build/lambda)
	@du -sm build/lambda | awk '{print "API function package, unzipped: " $$1 " MB (limit 250 MB)"}'

# The retraining steps that need no training stack: chalicelib + the step's handler as app.py.
LIGHT_DEPS = aws-lambda-powertools[tracer] pydantic platformdirs
define light_function
	cp -r chalicelib "$(ARTIFACTS_DIR)/" && cp functions/$(1)/app.py "$(ARTIFACTS_DIR)/app.py"
	python3 -m pip install --quiet --no-warn-conflicts --target "$(ARTIFACTS_DIR)" --platform manylinux2014_x86_64 \
		--implementation cp --python-version $(LAMBDA_PYTHON) --only-binary=:all: $(LIGHT_DEPS)
endef
build-StartTrainingFunction:
	$(call light_function,start_training)
build-CheckTrainingFunction:
	$(call light_function,check_training)
build-PromoteFunction:
	$(call light_function,promote)
build-RejectFunction:
	$(call light_function,reject)

# The drift monitor needs numpy and scipy (the serving dependencies), not the training stack.
build-DriftMonitorFunction:
	cp -r chalicelib "$(ARTIFACTS_DIR)/" && cp functions/drift_monitor/app.py "$(ARTIFACTS_DIR)/app.py"
	python3 -m pip install --quiet --no-warn-conflicts --target "$(ARTIFACTS_DIR)" --platform manylinux2014_x86_64 \
		--implementation cp --python-version $(LAMBDA_PYTHON) --only-binary=:all: $(SERVING_DEPS)

# Batch scoring (issue #9): chalicelib + the step's handler as app.py + the serving dependencies (no pandas, no
# scikit-learn), with Powertools' tracer for chalicelib.lambda_step; boto3 and botocore come with the runtime.
.PHONY: build-BatchScoreFunction build-BatchPrepareFunction build-BatchMergeFunction
define batch_function
	cp -r chalicelib "$(ARTIFACTS_DIR)/" && cp functions/$(1)/app.py "$(ARTIFACTS_DIR)/app.py"
	python3 -m pip install --quiet --no-warn-conflicts --target "$(ARTIFACTS_DIR)" --platform manylinux2014_x86_64 \
		--implementation cp --python-version $(LAMBDA_PYTHON) --only-binary=:all: $(SERVING_DEPS) \
		"aws-lambda-powertools[tracer]"
	cd "$(ARTIFACTS_DIR)" && rm -rf bin scipy/*/tests scipy/*/*/tests botocore* jmespath* urllib3* dateutil \
		python_dateutil* six* && find . -name __pycache__ -prune -exec rm -rf {} +
endef
build-BatchScoreFunction:
	$(call batch_function,batch_score)
build-BatchPrepareFunction:
	$(call batch_function,batch_prepare)
build-BatchMergeFunction:
	$(call batch_function,batch_merge)

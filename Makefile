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

.PHONY: setup tools browser validate-asl demo test lint clean docs build-ApiFunction lambda-size build-StartTrainingFunction \
	build-CheckTrainingFunction build-PromoteFunction build-RejectFunction build-DriftMonitorFunction \
	build-EmbedderFunction
.DEFAULT_GOAL := demo
# `make demo` ends by serving the API and the clinician page in the foreground (DEMO_SERVE=0: it does not).
DEMO_SERVE ?= 1
DEMO_PORT ?= 8000

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
	$(BIN)/readmit index
	$(BIN)/readmit predict --out $(READMIT_HOME)/predictions.csv
	@echo
	@echo "Model card: $$(ls -d $(READMIT_HOME)/bundles/*/ | tail -1)model_card.md"
	@echo "Predictions: $(READMIT_HOME)/predictions.csv"
	@echo "Clinician page: http://127.0.0.1:$(DEMO_PORT)/  (later: $(BIN)/readmit serve --port $(DEMO_PORT), then open it)"
	@if [ "$(DEMO_SERVE)" = 1 ]; then echo "Serving the API and the page; Ctrl-C stops it (DEMO_SERVE=0 skips this step)."; \
		$(BIN)/readmit serve --port $(DEMO_PORT); fi

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# `readmit data` finds the data set (downloading it from UCI if need be) and keeps the official copy in the user
# cache, where the tests look when there is no ../shared beside the clone; the tests themselves never download.
test: setup tools browser lint
	$(BIN)/readmit data > /dev/null
	$(BIN)/pytest -q

docs: setup
	$(BIN)/readmit features --out docs/features.md

clean:
	rm -rf $(VENV) $(TOOLS) .readmit .pytest_cache .ruff_cache

# SAM's makefile build (template.yaml: BuildMethod makefile): the API function gets app.py, chalicelib and the
# serving dependencies only (no pandas, no scikit-learn), as Linux wheels. Chalice is needed only for its
# runtime module (no botocore, click or yaml: boto3 comes with the Lambda runtime); test suites are dropped.
LAMBDA_PYTHON ?= 3.12
define compile_bytecode
	@if [ -n "$(LAMBDA_PYTHON_BIN)" ]; then "$(LAMBDA_PYTHON_BIN)" deploy/lambda/compile_imports.py "$(ARTIFACTS_DIR)"; \
		else echo "note: no python$(LAMBDA_PYTHON) here, so no bytecode in the package (a slower cold start)"; fi
endef
# The runtime's interpreter, to write the bytecode of what a function imports (deploy/lambda/compile_imports.py).
LAMBDA_PYTHON_BIN ?= $(firstword $(shell python$(LAMBDA_PYTHON) -c 'import sys; print(sys.executable)' 2>/dev/null) $(wildcard $(HOME)/.pyenv/versions/$(LAMBDA_PYTHON).*/bin/python))
SERVING_DEPS = numpy xgboost-cpu scipy pydantic aws-lambda-powertools platformdirs prometheus-client
VECTOR_DEPS = qdrant-client opensearch-py  # the API's similar-patient search (imported only when selected)
build-ApiFunction:
	cp -r app.py chalicelib "$(ARTIFACTS_DIR)/"
	python3 -m pip install --quiet --no-warn-conflicts --target "$(ARTIFACTS_DIR)" --platform manylinux2014_x86_64 \
		--implementation cp --python-version $(LAMBDA_PYTHON) --only-binary=:all: $(SERVING_DEPS) $(VECTOR_DEPS)
	python3 -m pip install --quiet --no-warn-conflicts --no-deps --target "$(ARTIFACTS_DIR)" chalice
	cd "$(ARTIFACTS_DIR)" && rm -rf bin chalice/cli chalice/deploy chalice/templates \
		scipy/*/tests scipy/*/*/tests && find . -name __pycache__ -prune -exec rm -rf {} +
	$(compile_bytecode)

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

# The embedder (SQS → embed → vector store): the feature code and the store clients, no model, no training stack.
EMBEDDER_DEPS = numpy pydantic aws-lambda-powertools[tracer] platformdirs prometheus-client $(VECTOR_DEPS)
build-EmbedderFunction:
	cp -r chalicelib "$(ARTIFACTS_DIR)/" && cp functions/embedder/app.py "$(ARTIFACTS_DIR)/app.py"
	python3 -m pip install --quiet --no-warn-conflicts --target "$(ARTIFACTS_DIR)" --platform manylinux2014_x86_64 \
		--implementation cp --python-version $(LAMBDA_PYTHON) --only-binary=:all: $(EMBEDDER_DEPS)
# Headless Chromium for the browser tests (tests/test_browser_e2e.py): Debian's package, driven by Playwright
# (its own browser download is never used; sudo only when not root), and axe-core for their accessibility check.
AXE_SPEC ?= axe-core@4
AXE_JS := $(TOOLS)/axe/node_modules/axe-core/axe.min.js
browser:
	@command -v chromium >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
		chromium chromium-driver; }
	@test -f $(AXE_JS) || { command -v npm >/dev/null || { echo "npm (Node.js 18+) is needed for $(AXE_SPEC)" >&2; exit 1; }; \
		npm install --prefix $(TOOLS)/axe --no-audit --no-fund --loglevel=error $(AXE_SPEC); }

.PHONY: checkov sourcedir

# checkov in its own venv under .tools/: checkov 3.3 pins boto3==1.35.49, which cannot sit beside aws-sam-cli's
# boto3 pin in .venv (only an older checkov resolves there, and it downgrades urllib3 and packaging).
CHECKOV_SPEC ?= checkov>=3.3
CHECKOV := $(TOOLS)/checkov/bin/checkov
CHECKOV_STAMP := $(TOOLS)/checkov/.installed-$(shell echo '$(CHECKOV_SPEC)' | sha1sum | cut -c1-12)

$(CHECKOV_STAMP): | $(STAMP)
	@rm -rf $(TOOLS)/checkov
	$(BIN)/uv venv -q --python $(BIN)/python $(TOOLS)/checkov
	$(BIN)/uv pip install -q --python $(TOOLS)/checkov/bin/python '$(CHECKOV_SPEC)'
	@touch $@

tools: $(CHECKOV_STAMP)

# Zero failed checks; skips live in template.yaml's Metadata with their reasons (tests/test_security.py too).
checkov: $(CHECKOV_STAMP)
	$(CHECKOV) -f template.yaml --framework cloudformation --skip-download --compact --quiet

# The SageMaker training job's code (script mode): chalicelib/ with its entry point, and the requirements the
# framework container installs first. deploy.yml uploads it to s3://<ArtifactBucketName>/code/sourcedir.tar.gz.
SOURCEDIR ?= build/sourcedir.tar.gz
sourcedir:
	rm -rf build/sourcedir && mkdir -p build/sourcedir "$(dir $(SOURCEDIR))"
	cp -r chalicelib build/sourcedir/ && find build/sourcedir -name __pycache__ -prune -exec rm -rf {} +
	$(PYTHON) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
		print("\n".join(p["dependencies"] + p["optional-dependencies"]["train"]))' > build/sourcedir/requirements.txt
	tar -czf "$(SOURCEDIR)" -C build/sourcedir .
	@echo "SageMaker source: $(SOURCEDIR)"

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
	$(compile_bytecode)
endef
build-BatchScoreFunction:
	$(call batch_function,batch_score)
build-BatchPrepareFunction:
	$(call batch_function,batch_prepare)
build-BatchMergeFunction:
	$(call batch_function,batch_merge)

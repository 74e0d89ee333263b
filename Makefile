# speech-to-image: every command the README mentions. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Offline, quiet CDK runs (FACTS.md): no version check, no EC2 metadata probe, no Node EOL banner.
export CDK_DISABLE_VERSION_CHECK := 1
export AWS_EC2_METADATA_DISABLED := true
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export PATH := $(CURDIR)/$(BIN):$(CURDIR)/node_modules/.bin:$(PATH)

SAMPLE ?= examples/astronaut-riding-a-horse.mp3

.PHONY: deploy-web destroy-web add-user generate
.PHONY: help setup demo test lint format pytest synth cfn-lint bench load bootstrap deploy-infra upload-model deploy-endpoint destroy-endpoint replay destroy clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(BIN)/.installed: requirements.txt requirements-dev.txt requirements-toolkit.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -r requirements-dev.txt
	$(BIN)/pip install --quiet -c constraints.txt --no-deps -r requirements-toolkit.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

setup: $(BIN)/.installed node_modules/.installed ## Install Python and Node dependencies (idempotent)

demo: setup ## Run the whole pipeline locally on the bundled sample recording
	$(BIN)/python -m local run $(SAMPLE)

test: setup lint pytest synth cfn-lint ## Lint, unit + integration tests, CDK synth and cfn-lint

lint: setup ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

pytest: setup ## The pytest suite (no network, no AWS account)
	$(BIN)/pytest

synth: setup ## cdk synth of all three stacks in both endpoint modes, with the CDK's built-in CloudFormation validation
	npx cdk synth --quiet
	npx cdk synth --quiet -c endpointMode=realtime --output cdk.out.realtime

cfn-lint: synth ## cfn-lint on the synthesized templates of both modes (errors fail, warnings shown)
	$(BIN)/cfn-lint --non-zero-exit-code error cdk.out/*.template.json cdk.out.realtime/*.template.json

bench: setup ## Benchmarks (print numbers; not tests)
	$(BIN)/python benchmarks/bench_handler_import.py
	$(BIN)/python benchmarks/bench_inference.py --device cpu
	$(BIN)/python benchmarks/bench_local.py
	$(BIN)/python benchmarks/bench_asr.py

load: setup ## Load test: 100 uploads, good and bad mixed, into local mode at once (prints a report)
	$(BIN)/python benchmarks/load_local.py

bootstrap: setup ## Prepare the account/region for CDK deployments (once; needs AWS credentials)
	npx cdk bootstrap

deploy-infra: setup ## Deploy the buckets and Lambdas (needs AWS credentials)
	npx cdk deploy InfraStack

upload-model: setup ## Package MODEL_DIR (a diffusers SD v1.x folder) and upload it to the model bucket
	@test -n "$(MODEL_DIR)" || { echo "usage: make upload-model MODEL_DIR=path/to/stable-diffusion-v1-4"; exit 2; }
	$(BIN)/python -m sd_tools.package_model --model-dir "$(MODEL_DIR)" --upload

deploy-endpoint: setup ## Deploy the GPU endpoint (after upload-model; costs money per hour)
	npx cdk deploy --exclusively HuggingFaceModelEndpoint

destroy-endpoint: setup ## Remove only the GPU endpoint (stops the hourly cost, keeps the buckets)
	npx cdk destroy --exclusively --force HuggingFaceModelEndpoint

replay: setup ## Send the events in the dead-letter queues through the pipeline again (after fixing the cause)
	$(BIN)/python -m ops.replay_dead_letters $(REPLAY_ARGS)

deploy-web: setup ## Deploy the web page, its sign-in and API (WebStack, after InfraStack; needs AWS credentials)
	npx cdk deploy WebStack

destroy-web: setup ## Remove only the web app (WebStack); the pipeline and its results stay
	npx cdk destroy --exclusively --force WebStack

add-user: setup ## Invite a person to the web app: make add-user EMAIL=someone@example.com [ADD_USER_ARGS=--resend]
	@test -n "$(EMAIL)" || { echo "usage: make add-user EMAIL=someone@example.com"; exit 2; }
	$(BIN)/python -m ops.add_user "$(EMAIL)" $(ADD_USER_ARGS)

generate: setup ## Speech to picture on the deployed stack: make generate FILE=speech.mp3 [GENERATE_ARGS="--out DIR"]
	@test -n "$(FILE)" || { echo "usage: make generate FILE=path/to/speech.mp3"; exit 2; }
	$(BIN)/python -m ops.generate $(FILE) $(GENERATE_ARGS)

destroy: setup ## Remove everything (buckets are emptied when removal=destroy)
	npx cdk destroy --force --all

clean: ## Remove build outputs and local results (keeps the venv)
	rm -rf cdk.out cdk.out.realtime out .pytest_cache .ruff_cache

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

.PHONY: help setup demo serve screenshot test lint format pytest synth cfn-lint checkov bench load bootstrap preflight
.PHONY: deploy-infra upload-model deploy-endpoint destroy-endpoint deploy-web destroy-web add-user generate replay destroy clean

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

serve: setup ## The web page over the local pipeline on http://127.0.0.1:8080 (PORT=... to change)
	$(BIN)/python -m local serve --port $(or $(PORT),8080)

screenshot: setup ## Regenerate docs/web.png (the page in headless Chromium after a spoken recording)
	$(BIN)/python scripts/web_screenshot.py

test: setup lint pytest synth cfn-lint checkov ## Lint, unit + integration tests, CDK synth, cfn-lint and checkov

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

preflight: setup ## Before deploying: check credentials, bootstrap, quotas, model archive (read-only; PREFLIGHT_ARGS="-c key=value")
	$(BIN)/python -m ops.preflight $(PREFLIGHT_ARGS)

# checkov pins many packages of its own: it lives in its own venv, never in .venv.
CHECKOV_VENV := .venv-checkov
CHECKOV_VERSION := 3.3.30
CHECKOV_FLAGS := --framework cloudformation --compact --quiet --skip-download -o json

$(CHECKOV_VENV)/bin/checkov:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet checkov==$(CHECKOV_VERSION)

checkov: synth $(CHECKOV_VENV)/bin/checkov ## checkov on both modes' templates; fails on a finding docs/DEPLOY-CHECKLIST.md does not accept
	@mkdir -p out/checkov
	@# checkov exits 1 whenever a check fails; the gate below decides.
	$(CHECKOV_VENV)/bin/checkov -d cdk.out $(CHECKOV_FLAGS) > out/checkov/async.json || true
	$(CHECKOV_VENV)/bin/checkov -d cdk.out.realtime $(CHECKOV_FLAGS) > out/checkov/realtime.json || true
	$(BIN)/python -m ops.checkov_gate out/checkov/async.json out/checkov/realtime.json

bootstrap: setup ## Prepare the account/region for CDK deployments (once; needs AWS credentials)
	npx cdk bootstrap

deploy-infra: setup ## Deploy the buckets and Lambdas (needs AWS credentials)
	npx cdk deploy InfraStack

upload-model: setup ## Package MODEL_DIR (SD 1.x/2.x/XL/turbo diffusers folder), upload it, set modelDataKey in cdk.json
	@test -n "$(MODEL_DIR)" || { echo "usage: make upload-model MODEL_DIR=path/to/stable-diffusion-v1-4"; exit 2; }
	$(BIN)/python -m sd_tools.package_model --model-dir "$(MODEL_DIR)" --upload --record-in cdk.json

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

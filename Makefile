# CIFAR-10 classification served by TorchServe. `make help` lists the targets.
#   make serve                 Java/procps if missing, venv, train if there is no model, archive if stale, start TorchServe
#   make test                  the Debian tools the tests run if missing, then every test tier
#   make test-fast             lint + the unit tier: no Java, no server, under a minute
# CIFAR10_DATA=path selects a local copy of the data set (docs/training.md); TRAIN_ARGS passes options to
# `python -m train` (default: --recipe nesterov, the best recipe, 82 %; `python -m train` alone runs the
# baseline); TOKEN_AUTH=off starts TorchServe without token authorization.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN ?= models/latest
TRAIN_ARGS ?= --recipe nesterov
TOKEN_AUTH ?= on
API ?= inference
DEVICE ?= cpu
MODEL_CONFIG := handler/model-config$(if $(filter gpu,$(DEVICE)),.gpu).yaml
export CIFAR10_DATA

.DEFAULT_GOAL := help
.PHONY: help venv train archive serve stop token test test-fast test-integration packages-serve packages-test clean bench-train bench-serve report

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

# checkov (the Kubernetes manifests' security scan) in a venv of its own: its pins would change .venv's.
CHECKOV := .tools/checkov/bin/checkov
$(CHECKOV): deploy/k8s/requirements-checkov.txt
	$(PYTHON) -m venv .tools/checkov
	.tools/checkov/bin/pip install --quiet -r deploy/k8s/requirements-checkov.txt
	touch $@

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed ## create .venv with the pinned packages

train: $(VENV)/.installed ## train a model into models/<run>/ (TRAIN_ARGS="--recipe ... --epochs ...")
	$(PY) -m train $(TRAIN_ARGS)

models/latest/model.pt: | $(VENV)/.installed
	$(PY) -m train $(TRAIN_ARGS)

model-store/cifar10.mar: $(RUN)/model.pt handler/cifar10_handler.py handler/cifar10_images.py handler/cifar10_metrics.py $(MODEL_CONFIG) | $(VENV)/.installed
	$(PY) -m serve archive --run $(RUN) --model-config $(MODEL_CONFIG)$(if $(filter gpu,$(DEVICE)), --device gpu)

archive: model-store/cifar10.mar ## package $(RUN) (default models/latest) into model-store/cifar10.mar (DEVICE=gpu: GPU config sized for this machine)

packages-serve: ## install what serving needs from Debian if missing (Java 17, procps)
	@bash setup/system-packages.sh serve

packages-test: ## install what the tests run from Debian if missing (serving's, Prometheus, linters, g++)
	@bash setup/system-packages.sh test

# The prerequisites are checked first: a missing Java must not surface after minutes of training.
serve: packages-serve archive ## start TorchServe in the background; returns once the model answers a prediction
	$(PY) -m serve start $(if $(filter off,$(TOKEN_AUTH)),--no-token-auth)

stop: ## stop TorchServe
	$(PY) -m serve stop

token: ## print the inference key (API=management for the management key)
	@$(PY) -m serve token $(API)

test: packages-test $(VENV)/.installed $(CHECKOV) ## every tier: unit, integration, end to end (data: CIFAR10_DATA, else ../shared/data/cifar10-jpeg.tar.gz)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(PY) -m pytest tests

test-fast: $(VENV)/.installed ## ruff, then the unit tier: no Java, no server (tests/unit)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(PY) -m pytest tests/unit -q

test-integration: packages-test $(VENV)/.installed $(CHECKOV) ## the tier with real TorchServe, Prometheus, Locust (tests/integration)
	$(PY) -m pytest tests/integration

bench-train: $(VENV)/.installed ## training benchmark: naive pipeline vs the baseline and fast recipes -> reports/bench-train.*
	$(PY) -m benchmarks.training $(if $(CIFAR10_DATA),--data $(CIFAR10_DATA))

bench-serve: $(VENV)/.installed ## serving benchmark: our TorchServe vs batchSize 1, Flask, LitServe, the ceiling -> reports/bench-serve.*
	@command -v wrk >/dev/null || { echo "bench-serve needs wrk: sudo apt-get install -y wrk" >&2; exit 2; }
	$(PY) -m benchmarks.serving $(if $(CIFAR10_DATA),--data $(CIFAR10_DATA)) --run $(RUN)

report: $(VENV)/.installed ## curves, confusion matrix and summary of the archived model -> reports/model/
	$(PY) -m train.report

clean: ## remove built archives, logs and keys (keeps models/ and the venv)
	rm -rf model-store logs key_file.json .torchserve

# --- Load tests (loadtests/, docs/load-testing.md) ----------------------------------------------
# make loadtest [SCENARIO=steady|ramp|spike] [LOADTEST_ARGS="-u 16 -t 2m --p99-ms 500 ..."]
SCENARIO ?= steady
LOADTEST_ARGS ?=
.PHONY: payloads loadtest

loadtests/payloads/manifest.json: | $(VENV)/.installed
	$(PY) -m loadtests.payloads --out loadtests/payloads

payloads: loadtests/payloads/manifest.json ## build the load tests' images from CIFAR-10 (once; CIFAR10_DATA=...)

loadtest: loadtests/payloads/manifest.json ## Locust, headless, against `make serve` (SCENARIO=steady|ramp|spike)
	$(PY) -m locust --config loadtests/$(SCENARIO).conf $(LOADTEST_ARGS)
# --- end of load tests ---------------------------------------------------------------------------

# --- reliability: served = evaluated, fault drills, soak (docs/reliability.md) ---
RELIABILITY_PORTS ?= 18090
DURATION ?= 600
.PHONY: verify-served reliability soak

verify-served: $(VENV)/.installed ## send the run's test images through `make serve`'s API; compare with the offline evaluation
	$(PY) -m serve.verify --run $(RUN)

reliability: model-store/cifar10.mar ## every bad input and fault drill on a TorchServe of its own; reports/reliability.json
	$(PY) -m reliability --port-base $(RELIABILITY_PORTS)

soak: $(VENV)/.installed ## 70% of CAPACITY req/s against `make serve` for DURATION s; reports/soak.json, soak.png
	@test -n "$(CAPACITY)" || { echo "usage: make soak CAPACITY=<req/s the service sustains> [DURATION=600]" >&2; exit 2; }
	$(PY) -m locust -f loadtests/soak.py --headless --only-summary --capacity $(CAPACITY) --duration $(DURATION) $(if $(CIFAR10_DATA),--data $(CIFAR10_DATA))
# --- end reliability ---

# --- containers ---
# make images: deploy/docker/build.sh (docker, else podman; a local Debian base where nothing can be
# pulled). docs/containers.md: what was built and run, sizes and times.
.PHONY: images test-images

images: ## build the serving and training images (tags <version>-<commit> and :local, what Compose runs)
	deploy/docker/build.sh

test-images: packages-test $(VENV)/.installed ## build both images, run them as Compose wires them, and the Compose chain
	$(PY) -m pytest tests/e2e/test_containers.py -rP
# --- end containers ---

# --- fleet ---
# Kubernetes (deploy/k8s) and the fleet drill (fleet/): docs/kubernetes.md.
FLEET_RUNS := models/fleet
FLEET_TRAIN := --epochs 1 --train-subset 5000 --test-subset 1000 $(if $(CIFAR10_DATA),--data $(CIFAR10_DATA))
.PHONY: kubernetes-check fleet-drill

$(FLEET_RUNS)/a/model.pt $(FLEET_RUNS)/b/model.pt: $(FLEET_RUNS)/%/model.pt: | $(VENV)/.installed
	$(PY) -m train $(FLEET_TRAIN) --seed $(if $(filter a,$*),1,2) --out-dir $(FLEET_RUNS) --run-name $*

kubernetes-check: $(VENV)/.installed $(CHECKOV) ## render deploy/k8s's overlays and validate them offline (schemas, checkov, consistency)
	$(PY) -m pytest -q tests/integration/test_kubernetes.py

fleet-drill: $(FLEET_RUNS)/a/model.pt $(FLEET_RUNS)/b/model.pt ## one pod's capacity (podman, the serving image), then rolling update, kill -9, scale-up, overload behind a Service-like HAProxy -> reports/fleet/
	@command -v haproxy >/dev/null && command -v nginx >/dev/null || { echo "fleet-drill needs haproxy and nginx: sudo apt-get install -y haproxy nginx" >&2; exit 2; }
	$(MAKE) --no-print-directory payloads
	$(PY) -m fleet.capacity --run $(FLEET_RUNS)/a
	$(PY) -m fleet.drill --run-a $(FLEET_RUNS)/a --run-b $(FLEET_RUNS)/b
# --- end fleet ---

# --- gpu ---
# The GPU check (docs/gpu.md). On a GPU machine: make gpu-check [GPU_STAGES=tests,train,serve]
# [GPU_CHECK_ARGS="--copy-to DIR --workers auto 16"]; on a bare one, carry .gpu-bundle/ first.
GPU_STAGES ?= tests,train,serve
GPU_CHECK_ARGS ?=
.PHONY: gpu-check gpu-check-bundle

gpu-check: ## on a GPU machine: GPU tests, training and serving vs issue 14's targets -> reports/gpu/
	benchmarks/gpu/check.sh --stages $(GPU_STAGES) $(GPU_CHECK_ARGS)

gpu-check-bundle: ## what a bare GPU machine lacks (Java, TorchServe, wrk, data) -> .gpu-bundle/part1, part2
	PIP=$(VENV)/bin/pip benchmarks/gpu/bundle.sh
# --- end gpu ---

# --- model: recipes, portable exports (docs/training.md, docs/portability.md) ---
RUNS ?= reports/recipes/*
.PHONY: recipes aot bench-portability

recipes: $(VENV)/.installed ## recipe runs side by side: markdown table + docs/recipes.png (RUNS="reports/recipes/*" or your runs)
	$(PY) -m train.compare $(RUNS) --plot docs/recipes.png

aot: $(VENV)/.installed ## add model.so (torch.export + AOTInductor, needs g++) to $(RUN); then: python -m serve archive --format aotinductor
	$(PY) -m train.aot --run $(RUN)

bench-portability: $(VENV)/.installed ## TorchScript, ONNX Runtime, AOTInductor side by side: size, build time, answers, speed -> reports/portability.*
	OMP_NUM_THREADS=1 $(PY) -m benchmarks.portability $(if $(CIFAR10_DATA),--data $(CIFAR10_DATA)) --run $(RUN)
# --- end model ---

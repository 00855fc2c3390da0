# CIFAR-10 served by TorchServe; `make help` lists the targets and their options (CIFAR10_DATA, RUN, ...).
SHELL := /bin/bash
PYTHON ?= python3
PY := .venv/bin/python
RUN ?= models/latest
STORE ?= model-store
TRAIN_ARGS ?= --recipe nesterov
DEVICE ?= cpu
DATA_ARG = $(if $(CIFAR10_DATA),--data $(CIFAR10_DATA))
# NOISY=1: the report of a busy machine is written all the same, marked (docs/performance.md#busy-machines)
NOISY_ARG = $(if $(NOISY),--noisy)
export CIFAR10_DATA
.DEFAULT_GOAL := help
.PHONY: train serve FORCE  # the targets named like a folder (the others make no file of their name)
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 18
# --- The product: train, archive, serve -------------------------------------------------------------
.venv/.installed: requirements.txt
	$(PYTHON) -m venv .venv && .venv/bin/pip install --quiet --upgrade pip
	.venv/bin/pip install --quiet -r requirements.txt && touch $@
venv: .venv/.installed ## create .venv with the pinned packages
train: .venv/.installed ## train a model into models/<run>/ (TRAIN_ARGS="--recipe ... --epochs ...")
	$(PY) -m train $(TRAIN_ARGS)
models/latest/model.pt: | .venv/.installed
	$(PY) -m train $(TRAIN_ARGS)

# The archive is rebuilt when its inputs change, and when DEVICE or RUN differ from the last archive's.
ARCHIVE_KEY := $(STORE)/.archived-from
$(ARCHIVE_KEY): FORCE
	@mkdir -p $(@D); echo "$(DEVICE) $(RUN) $(GPU_WORKERS)" | cmp -s - $@ || echo "$(DEVICE) $(RUN) $(GPU_WORKERS)" >$@
$(STORE)/cifar10.mar: $(RUN)/model.pt $(ARCHIVE_KEY) $(wildcard handler/*.py handler/*.yaml handler/*.json) | .venv/.installed
	$(PY) -m serve archive --run $(RUN) --store $(STORE) --device $(DEVICE) $(if $(GPU_WORKERS),--workers $(GPU_WORKERS))
archive: $(STORE)/cifar10.mar ## package RUN (default models/latest) into model-store/cifar10.mar (DEVICE=gpu: GPU config)

serve: ## start TorchServe in the background (installs Java, trains and archives first if needed)
	@bash setup/system-packages.sh serve
	$(MAKE) --no-print-directory archive
	$(PY) -m serve start $(if $(filter off,$(TOKEN_AUTH)),--no-token-auth)
stop: ## stop TorchServe
	$(PY) -m serve stop
token: ## print the inference key (API=management for the management key)
	@$(PY) -m serve token $(or $(API),inference)
grpc-stubs: .venv/.installed ## regenerate serve/torchserve_grpc's Python stubs of TorchServe's gRPC API (grpcio-tools)
	$(PY) -m serve.torchserve_grpc
report: .venv/.installed ## curves, confusion matrix and summary of the archived model -> reports/model/
	$(PY) -m train.report
verify-served: .venv/.installed ## every test image through `make serve`, compared with the offline evaluation
	$(PY) -m harness.verify --run $(RUN)
clean: ## remove built archives, logs and keys (keeps models/ and the venv)
	rm -rf model-store logs key_file.json .torchserve

# --- Tests (checkov, the manifests' security scan, and the kserve SDK, a v2 client, have venvs of their own: their
# pins would change .venv's)
.tools/checkov/bin/checkov: deploy/k8s/requirements-checkov.txt
	$(PYTHON) -m venv .tools/checkov && .tools/checkov/bin/pip install --quiet -r $< && touch $@
.tools/kserve/bin/python: tests/requirements-kserve.txt
	$(PYTHON) -m venv .tools/kserve && .tools/kserve/bin/pip install --quiet -r $< && touch $@
LINT := .venv/bin/ruff format --check . && .venv/bin/ruff check .
test: .venv/.installed .tools/checkov/bin/checkov .tools/kserve/bin/python ## every tier: unit, integration, end to end (installs their tools)
	@bash setup/system-packages.sh test
	$(LINT)
	$(PY) -m pytest tests
test-fast: .venv/.installed ## ruff, then the unit tier: no data set, no Java, no server
	$(LINT)
	$(PY) -m pytest tests/unit -q

# --- Containers, Kubernetes, the fleet (docs/containers.md, docs/kubernetes.md) ---------------------
kserve-layout: .venv/.installed ## KServe's storage layout of RUN (ONNX archive, deploy/kserve's config) -> dist/kserve
	$(PY) -m serve kserve-layout --run $(RUN) --out dist/kserve
images: ## build the serving, slim serving and training images (docker, else podman)
	deploy/docker/build.sh
test-images: .venv/.installed ## build the images and run them as Compose wires them
	$(PY) -m pytest tests/e2e/test_containers.py -rP
kubernetes-check: .venv/.installed .tools/checkov/bin/checkov ## render deploy/k8s's overlays, validate them offline
	$(PY) -m pytest -q tests/integration/test_kubernetes.py
kube-play: .venv/.installed ## the rendered CPU overlay's pod under podman kube play (needs `make images`)
	$(PY) -m pytest -q tests/e2e/test_kube_play.py
FLEET_RUNS := models/fleet
$(FLEET_RUNS)/%/model.pt: | .venv/.installed
	$(PY) -m train --epochs 1 --train-subset 5000 --test-subset 1000 $(DATA_ARG) --seed $(if $(filter a,$*),1,2) --out-dir $(FLEET_RUNS) --run-name $*
fleet-drill: $(FLEET_RUNS)/a/model.pt $(FLEET_RUNS)/b/model.pt payloads ## rollout, kill -9, overload behind a Service-like balancer
	@bash setup/system-packages.sh test
	$(PY) -m fleet.drill --run-a $(FLEET_RUNS)/a --run-b $(FLEET_RUNS)/b $(NOISY_ARG)
capacity: .venv/.installed ## one pod as deployed (slim image, limits, gateway) under wrk -> reports/capacity.md, the HPA target
	@bash setup/system-packages.sh test
	$(PY) -m fleet.capacity $(DATA_ARG) --run $(RUN) $(NOISY_ARG)

# --- Load, drills, benchmarks (docs/load-testing.md, reliability.md, performance.md, training.md) ---
loadtests/payloads/manifest.json: | .venv/.installed
	$(PY) -m loadtests.payloads --out loadtests/payloads
payloads: loadtests/payloads/manifest.json ## the load tests' images, built from CIFAR-10 once
loadtest: payloads ## Locust against `make serve` (SCENARIO=steady|ramp|spike, LOADTEST_ARGS="-u 16 -t 2m")
	$(PY) -m locust --config loadtests/$(or $(SCENARIO),steady).conf $(NOISY_ARG) $(LOADTEST_ARGS)
soak: .venv/.installed ## 70% of CAPACITY req/s against `make serve` for DURATION s -> reports/soak.*
	$(PY) -m locust -f loadtests/soak.py --headless --only-summary --capacity $(CAPACITY) --duration $(or $(DURATION),600) $(DATA_ARG) $(NOISY_ARG)
reliability: archive ## bad inputs, fault drills, hostile clients on a TorchServe of their own -> reports/reliability.md
	$(PY) -m reliability $(NOISY_ARG)
bench-serve: .venv/.installed ## serving benchmark: shipped TorchServe vs its own batching, ONNX Runtime, Flask, LitServe -> reports/bench-serve.*
	@bash setup/system-packages.sh test
	$(PY) -m benchmarks.serving $(DATA_ARG) --run $(RUN) $(NOISY_ARG)
bench-train: .venv/.installed ## training benchmark: the naive pipeline against the recipes -> reports/bench-train.*
	$(PY) -m benchmarks.training $(DATA_ARG) $(NOISY_ARG)
bench-portability: .venv/.installed ## TorchScript, ONNX Runtime, AOTInductor side by side -> reports/portability.*
	OMP_NUM_THREADS=1 $(PY) -m benchmarks.portability $(DATA_ARG) --run $(RUN) $(NOISY_ARG)
recipes: .venv/.installed ## recipe runs side by side: a table and docs/recipes.png (RUNS="reports/recipes/*")
	$(PY) -m train.compare $(or $(RUNS),reports/recipes/*) --plot docs/recipes.png
aot: .venv/.installed ## add model.so (AOTInductor, needs g++) to RUN
	$(PY) -m train.aot --run $(RUN)
gpu-check: ## on a GPU machine with the project installed: the GPU path against its targets -> reports/gpu/
	$(or $(GPU_PYTHON),$(PY)) -m benchmarks.gpu_check $(if $(GPU_STAGES),--stages $(GPU_STAGES)) $(GPU_CHECK_ARGS)

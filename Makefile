# Licence-plate recognition on NVIDIA Triton: the single entry point. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_SYSTEM ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheel of PyTorch by default; set TORCH_SPEC=torch to take a CUDA build on a GPU machine.
TORCH_SPEC ?= torch==2.13.0

BUILD ?= build
ONNX_DIR ?= $(BUILD)/onnx
REPOSITORY ?= model_repository
# cpu: Python-backend onnxruntime runner (the nvidia-pytriton server); onnxruntime: the official image's native
# backend; tensorrt: TensorRT plans. `auto` picks tensorrt where TensorRT and a GPU are present.
TARGET ?= auto
MAX_PLATES ?= 8
# Detector tiles per side besides the whole image: 2 finds small plates; 1 (the whole image alone) is ~4x cheaper on CPU.
TILE_GRID ?= 2
DETECTOR_WEIGHTS ?=
LPRNET_WEIGHTS ?=
STN_WEIGHTS ?=
HOST ?= 127.0.0.1
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
IMAGES ?= $(BUILD)/samples
PYTEST_ARGS ?=
# make serve: USE_DOCKER=0 keeps the embedded CPU server even where Docker has the NVIDIA runtime.
USE_DOCKER ?= 1
IMAGE ?= alpr-triton
# make soak: seconds of load and concurrent clients.
SOAK_DURATION ?= 1800
SOAK_CONCURRENCY ?= 16

# make train-gpu: seconds of training for each model, and where its runs and logs go.
GPU_BUDGET ?= 1800
GPU_RUNS ?= runs/gpu
# Options for one trainer only (ARGS goes to both), e.g. DETECTOR_ARGS="--tile-views 0.4 --max-distractors 10".
DETECTOR_ARGS ?=
RECOGNISER_ARGS ?=

STAMP := $(VENV)/.installed
WEIGHT_FLAGS = $(if $(DETECTOR_WEIGHTS),--detector-weights $(DETECTOR_WEIGHTS)) \
	$(if $(LPRNET_WEIGHTS),--lprnet-weights $(LPRNET_WEIGHTS)) $(if $(STN_WEIGHTS),--stn-weights $(STN_WEIGHTS))

.PHONY: help install system-packages samples data soak train train-detector train-recogniser recogniser-weights train-gpu eval thresholds onnx engines serve serve-cpu serve-gpu demo test lint \
	bench analyze clean

help: ## list the targets and their settings
	@echo "Licence-plate recognition on NVIDIA Triton"
	@echo
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-18s %s\n", $$1, $$2}'
	@echo
	@echo "Settings (make VAR=value): TARGET=$(TARGET) MAX_PLATES=$(MAX_PLATES) TILE_GRID=$(TILE_GRID) HOST=$(HOST)"
	@echo "  GRPC_PORT=$(GRPC_PORT) HTTP_PORT=$(HTTP_PORT) METRICS_PORT=$(METRICS_PORT) DETECTOR_WEIGHTS LPRNET_WEIGHTS STN_WEIGHTS (default:"
	@echo "  the committed alpr/weights/*.pt) TORCH_SPEC=$(TORCH_SPEC) IMAGES=$(IMAGES) USE_DOCKER=$(USE_DOCKER) IMAGE=$(IMAGE)"

install: $(STAMP) ## create the virtualenv with everything (PyTorch CPU, onnxruntime, Triton server, clients)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" -e ".[export,serve,bench,dev]"
	touch $@

# Debian packages no wheel provides: the plate fonts (synthetic data: tests, samples, training, evaluation) and libb64
# (perf_analyzer). Installed with apt-get as root, else unpacked into $(VENV)/system, else the exact command is printed.
system-packages: ## install the plate fonts and libb64 the tests, data and benchmarks need (serving needs neither)
	@$(PYTHON_SYSTEM) -m alpr.system_packages --prefix $(VENV)

data: $(STAMP) $(IMAGES)/annotations.json | system-packages ## write the held-out synthetic evaluation set and sample images to build/
	$(PY) -m alpr.synth.dataset --heldout --out $(BUILD)/heldout

samples: $(IMAGES)/annotations.json ## write the sample street scenes to build/samples/ (IMAGES)

$(IMAGES)/annotations.json: | $(STAMP) system-packages
	$(PY) -m alpr.synth.dataset --out $(IMAGES) --scenes 6 --sizes mixed --seed 2024

train: train-recogniser train-detector ## train both networks from scratch on synthetic data (not the defaults); resumable

train-detector: $(STAMP) | system-packages ## train the YOLOv5n plate detector (DETECTOR_ARGS="--real-share 0.7" adds real photos; ARGS="--resume")
	$(PY) -m alpr.train.detector $(ARGS) $(DETECTOR_ARGS)

train-recogniser: $(STAMP) | system-packages ## train STN + LPRNet with CTC on synthetic plates (add ARGS="--resume" to continue)
	$(PY) -m alpr.train.recogniser $(ARGS) $(RECOGNISER_ARGS)

recogniser-weights: $(STAMP) ## write the default STN + LPRNet (alpr/weights/) from the published checkpoints in ../shared
	$(PY) -m alpr.models.published

# No $(STAMP): a GPU machine brings its own CUDA PyTorch (make train-gpu PY=python3).
train-gpu: ## continue the committed weights on one GPU, both models at once, GPU_BUDGET s each; logs in GPU_RUNS
	mkdir -p $(GPU_RUNS)
	$(PY) -m alpr.train.recogniser --device cuda --init-stn alpr/weights/stn.pt --init-lprnet alpr/weights/lprnet.pt \
		--time-budget $(GPU_BUDGET) --iterations 100000000 --batch-size 64 --lr 1e-3 --replay 4 --workers 5 \
		--eval-every 1000 --run-dir $(GPU_RUNS)/recogniser $(ARGS) $(RECOGNISER_ARGS) >$(GPU_RUNS)/recogniser.log 2>&1 & recogniser=$$!; \
	$(PY) -m alpr.train.detector --device cuda --init alpr/weights/detector.pt --tile-size 640 \
		--time-budget $(GPU_BUDGET) --iterations 100000000 --batch-size 32 --lr 1e-3 --replay 3 --workers 9 \
		--save-every 500 --run-dir $(GPU_RUNS)/detector $(ARGS) $(DETECTOR_ARGS) >$(GPU_RUNS)/detector.log 2>&1 & detector=$$!; \
	echo "training for $(GPU_BUDGET) s; progress in $(GPU_RUNS)/{recogniser,detector}.log"; \
	wait $$recogniser; failed=$$?; wait $$detector || failed=1; tail -n 25 $(GPU_RUNS)/*.log; exit $$failed

eval: $(STAMP) | system-packages ## accuracy of the weights: real photos (test split, ../shared/real), then the held-out synthetic set
	$(PY) -m alpr.evaluate --tile-grid $(TILE_GRID) $(WEIGHT_FLAGS)

thresholds: $(STAMP) | system-packages ## choose the detector score thresholds on the real validation photos; build/thresholds/
	$(PY) -m alpr.thresholds --tile-grid $(TILE_GRID) $(if $(DETECTOR_WEIGHTS),--detector-weights $(DETECTOR_WEIGHTS))

onnx: $(STAMP) ## export preprocess, detector (NMS inside), crop, STN and LPRNet to ONNX, checked against PyTorch
	$(PY) export/to_onnx.py --out-dir $(ONNX_DIR) --max-plates $(MAX_PLATES) --tile-grid $(TILE_GRID) $(WEIGHT_FLAGS)
	$(PY) export/verify.py --onnx-dir $(ONNX_DIR) $(WEIGHT_FLAGS)
	$(PY) export/tensorrt_variant.py --out-dir $(ONNX_DIR) --max-plates $(MAX_PLATES) --tile-grid $(TILE_GRID) \
		$(WEIGHT_FLAGS)

engines: onnx ## build the served models (TensorRT plans on a GPU, else ONNX) into model_repository/
	$(PY) -m ensemble.build --target $(TARGET) --onnx-dir $(ONNX_DIR) --out $(REPOSITORY) --max-plates $(MAX_PLATES) \
		--tile-grid $(TILE_GRID)

serve: ## serve the ensemble: the GPU container when Docker has the NVIDIA runtime, else the embedded CPU server
	@if [ "$(USE_DOCKER)" != "0" ] && command -v docker >/dev/null 2>&1 && \
		docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia; then \
		$(MAKE) --no-print-directory serve-gpu; \
	else \
		$(MAKE) --no-print-directory serve-cpu; \
	fi

serve-cpu: $(STAMP) ## the real tritonserver of nvidia-pytriton on the CPU (engines built if missing)
	@test -f $(REPOSITORY)/detector/1/model.onnx || $(MAKE) --no-print-directory engines TARGET=cpu
	@# Sample images for the README's example; serving itself needs no fonts, so it goes on without them.
	@$(MAKE) --no-print-directory samples || echo "make serve: no sample images in $(IMAGES) (see above); serving anyway"
	$(PY) -m alpr.serving.server serve --repository $(REPOSITORY) --host $(HOST) \
		--http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

serve-gpu: ## Dockerfile.triton on the GPU: TensorRT plans built at first start into the volume alpr-engines
	docker build -f Dockerfile.triton -t $(IMAGE) .
	docker volume create alpr-engines >/dev/null
	docker run --rm --gpus all --shm-size=1g -p $(HOST):$(HTTP_PORT):8000 -p $(HOST):$(GRPC_PORT):8001 \
		-p $(HOST):$(METRICS_PORT):8002 -v alpr-engines:/var/cache/alpr $(IMAGE)

demo: $(STAMP) $(IMAGES)/annotations.json | system-packages ## send the sample images to a running server, draw plates into build/annotated/
	$(VENV)/bin/lpr $(IMAGES) --url $(HOST):$(GRPC_PORT) --annotate-dir $(BUILD)/annotated

test: $(STAMP) | system-packages ## run the test suite (starts its own Triton server on free ports)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check and format check, mypy type check of alpr/
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP) | system-packages ## perf_analyzer: ensemble vs BLS baseline vs in-process floor; writes benchmarks/RESULTS.md (ARGS="--note ...")
	@test -f $(REPOSITORY)/detector/1/model.onnx || $(MAKE) --no-print-directory engines TARGET=cpu
	$(PY) -m benchmarks.run $(ARGS)

soak: $(STAMP) | system-packages ## SOAK_DURATION s at SOAK_CONCURRENCY: every answer checked, server memory sampled; build/soak/
	@test -f $(REPOSITORY)/detector/1/model.onnx || $(MAKE) --no-print-directory engines TARGET=cpu
	$(PY) -m benchmarks.soak --repository $(REPOSITORY) --duration $(SOAK_DURATION) --concurrency $(SOAK_CONCURRENCY)

analyze: $(STAMP) | system-packages ## Triton Model Analyzer quick search over the composing models; report in benchmarks/
	@test -f $(REPOSITORY)/detector/1/model.onnx || $(MAKE) --no-print-directory engines TARGET=cpu
	$(PY) -m benchmarks.analyze

clean: ## remove build outputs (keeps the virtualenv and the committed weights)
	rm -rf $(BUILD) runs model_repository/*/1/model.onnx model_repository/*/1/model.plan

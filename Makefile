# The README's two commands: `make demo` and `make test`. Both build .venv from scratch when it is missing.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo demo-core test test-slow triton-env lint-imports bench-quality bench-quality-minilm bench-scale bench-serving bench-canary bench-services report image image-base image-push clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned resolve would pull the CUDA build (gigabytes).
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,platform,serving,dev]'
	@command -v kubectl >/dev/null || echo "warning: kubectl is not on PATH; tests/serving/canary renders and patches manifests with it (any recent client, no cluster needed)"
	touch $(STAMP)

## A real Triton Inference Server for loopback (relevance serve-triton, the Triton tests, bench-serving): the
## nvidia-pytriton wheel's tritonserver (2.51, Python backend) with ONNX Runtime, in a venv of its own (~440 MB):
## the server is a separate process, and the wheel's pins need not agree with the project's.
TRITON_VENV  := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed
$(TRITON_STAMP): Makefile
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q nvidia-pytriton==0.7.0 onnxruntime==1.31.1
	touch $(TRITON_STAMP)
triton-env: $(TRITON_STAMP)

## Label Studio 1.23.2 on loopback (relevance.platform.services.label_studio: the human-grading round trip of
## make test-slow, and a team's trial) in a venv of its own (~1 GB, ~3 min): a Django app whose pins, those of the
## label-studio-sdk 2.1.2 it brings among them, would downgrade the project's numpy and PyJWT.
LABEL_STUDIO_VENV  := .venv-labelstudio
LABEL_STUDIO_STAMP := $(LABEL_STUDIO_VENV)/.installed
.PHONY: label-studio-env
$(LABEL_STUDIO_STAMP): Makefile
	$(PYTHON) -m venv $(LABEL_STUDIO_VENV)
	$(LABEL_STUDIO_VENV)/bin/python -m pip install -q label-studio==1.23.2
	touch $(LABEL_STUDIO_STAMP)
label-studio-env: $(LABEL_STUDIO_STAMP)

## Main job: the KFP training pipeline run locally (kfp.local) on the synthetic shop, quick profile, MiniLM-L6:
## GX gate → Feast features → teacher → labels (fan-out) → student → evaluation → ONNX → MLflow registry.
demo: $(STAMP)
	$(VENV)/bin/relevance pipeline run --local --profile quick

## The chain without KFP, Feast, GX or MLflow (the core library alone): runs/quick/report.md
demo-core: $(STAMP)
	$(VENV)/bin/relevance run --profile quick

## Set up and pass the test suite (tiny random models; no downloads, no GPU), then the layering contracts.
test: $(STAMP) $(TRITON_STAMP)
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory lint-imports

## The slow tests: the wheel, installed outside the checkout, runs the quick profile on real weights; the real MLflow
## server's fault tests, torch.distributed, the local canary loop, the Label Studio round trip, the scale smoke run,
## the production loop end to end (pipeline, capture, monitor, grading from traffic, refresh, canary watch).
test-slow: $(STAMP) $(TRITON_STAMP) $(LABEL_STUDIO_STAMP)
	$(PY) -m pytest -q -m slow

## The layers (pyproject.toml [tool.importlinter]), checked on the built wheel: there every module sits where it
## is installed (serving/, pipelines/ and components/ become relevance.serving, …), which an editable install hides.
LAYERS := build/layers
lint-imports: $(STAMP)
	@rm -rf $(LAYERS) && mkdir -p $(LAYERS)
	@$(PY) -m pip wheel -q --no-deps --no-build-isolation -w $(LAYERS) . 2>&1 | grep -v '^WARNING: Location' || true
	@cd $(LAYERS) && $(CURDIR)/$(PY) -m zipfile -e relevance-*.whl site
	@for layer in pipelines components serving; do test -f $(LAYERS)/site/relevance/$$layer/__init__.py || \
		{ echo "the wheel has no relevance.$$layer: the layers contract would skip it"; exit 1; }; done
	cd $(LAYERS) && PYTHONPATH=site $(CURDIR)/$(VENV)/bin/lint-imports --config $(CURDIR)/pyproject.toml

## Real-data quality benchmark, the mpnet-base teacher (hours on 2 CPU cores: training ~1.5 h, labelling the
## 227k-pair pool ~25 min; `relevance fetch-backbone mpnet-base` first) → benchmarks/results/quality-homedepot.json
bench-quality: $(STAMP)
	$(VENV)/bin/relevance fetch-backbone mpnet-base
	$(PY) -m benchmarks.quality_homedepot --config configs/homedepot.yaml

## The same chain with the MiniLM-L6 teacher, its student on tuned towers and a 3-layer query tower (about 70 minutes
## on 2 cores): the run the studies, the serving and the canary benchmarks start from (runs/homedepot)
bench-quality-minilm: $(STAMP)
	$(VENV)/bin/relevance run --config configs/homedepot-minilm.yaml

## Out-of-core distillation at scale (~1.5 h on 2 cores): the synthetic shop at 10M+ pool pairs, every stage's time
## and peak RSS, distillation at 1M / 3M / 10M pairs → benchmarks/results/scale.{json,md,png}
bench-scale: $(STAMP)
	$(PY) -m benchmarks.scale

## Serving on Home Depot (needs the bench-quality-minilm run): a real server pinned to one core, 100-candidate requests,
## cache replays, teacher cost, int8 quality → benchmarks/results/serving.{json,md} + serving-latency.png
bench-serving: $(STAMP) $(TRITON_STAMP)
	$(PY) -m benchmarks.serving --config configs/homedepot-minilm.yaml

## The local canary loop on Home Depot (needs the bench-quality-minilm run, about 1 minute): human-only student (champion)
## vs distilled student (challenger) behind a 10% splitter → benchmarks/results/canary-homedepot.{md,json,png}
bench-canary: $(STAMP)
	$(PY) -m benchmarks.canary_homedepot --config configs/homedepot-minilm.yaml

## The platform's services on loopback (Redis, an MLflow server, Label Studio): start-up time, cold and warm, and
## memory, three starts each (~5 minutes) → benchmarks/results/services.{json,md}
bench-services: $(STAMP) $(LABEL_STUDIO_STAMP)
	$(PY) -m benchmarks.services

## The studies and their report (need the bench-quality-minilm run; each step is cached under runs/studies, so a rerun
## after one change redoes only what it touched): benchmarks/results/report.html + studies.json.
## `python -m benchmarks.studies --only scaling` reruns one study.
report: $(STAMP)
	$(PY) -m benchmarks.studies

## The image every KFP step runs in (infra/docker/README.md): make image IMAGE=registry.example.com/relevance:0.1.0
IMAGE      ?= relevance:0.1.0
BASE_IMAGE ?= python:3.11-slim-bookworm
image:
	IMAGE=$(IMAGE) BASE_IMAGE=$(BASE_IMAGE) infra/docker/build.sh

image-push: image
	docker push $(IMAGE)

## A base image without any registry (root + debootstrap); then: make image BASE_IMAGE=relevance-base:bookworm
image-base:
	BASE_IMAGE=relevance-base:bookworm infra/docker/build-base.sh

clean:
	rm -rf runs .cache

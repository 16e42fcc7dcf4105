# Lumi: raw text -> a small LLaMA-style model you can chat with, on one consumer GPU.
# Every target installs what it needs first (the .venv stamp), so a fresh clone needs no separate step.
# Times and memory in comments are for one RTX 4090 (24 GB) unless they say CPU.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        ?= .venv
PYTHON      ?= python3
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
CONFIG      ?= config/datasets/demo_tiny.json
ARGS        ?=
DATA        ?= data/processed/demo_tiny
BATCH_SIZE  ?=
LEARNING_RATE ?=
# Datasets come from the Hugging Face Hub by id (cached after the first download). LUMI_DATA_DIR=/path points every
# stage at a local mirror instead (one subfolder per dataset, original formats; README "Data without the hub").
export LUMI_DATA_DIR
TRAIN_FLAGS  = --data_path $(DATA) $(if $(BATCH_SIZE),--batch_size $(BATCH_SIZE)) \
               $(if $(LEARNING_RATE),--learning_rate $(LEARNING_RATE)) $(ARGS)

.PHONY: help install install-extra check-env install-flash-attn test test-fast \
        prepare prepare-demo prepare-tinystories prepare-fineweb prepare-wt2 prepare-wt103 prepare-wiki prepare-owt prepare-prose \
        pretrain-tiny pretrain-small pretrain-base resume-pretrain-tiny sft dpo sft-alpaca dpo-hh \
        pretrain-multi-gpu sft-multi-gpu dpo-multi-gpu \
        evaluate evaluate-quick evaluate-detailed assess-performance compare-lm-eval \
        session-quick session-prototype session-experiment session-ablation session-optimizers session-recipe session-evaluation \
        session-debug session-architecture \
        session-status session-cleanup pipeline-full create-sample-datasets test-pipeline backup clean \
        clean-checkpoints monitor config-rtx4090 bench bench-data bench-train bench-recipe bench-export \
        export-gguf serve serve-api serve-web install-browser install-llama-cpp bench-serve bench-finetune gpu-check gpu-check-wheels

help: ## List every target with one line each
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}'
	@echo ""
	@echo "  Variables: CONFIG=<dataset json> DATA=<prepared dataset dir> BATCH_SIZE= LEARNING_RATE= ARGS='<extra flags>'"

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the pinned requirements (idempotent; ~1-2 min the first time)

install-extra: $(STAMP) ## Optional extras: tensorboard, wandb, lm-eval (for --report_to and the lm-eval check)
	$(PY) -m pip install --quiet -r requirements-extra.txt

install-llama-cpp: $(STAMP) ## llama-cpp-python (compiles llama.cpp, CPU only, several minutes) for the GGUF round-trip tests
	CMAKE_ARGS="$${CMAKE_ARGS:--DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}" \
		CMAKE_BUILD_PARALLEL_LEVEL=$${CMAKE_BUILD_PARALLEL_LEVEL:-$$(nproc)} \
		$(PY) -m pip install --quiet -r requirements-llama-cpp.txt

install-browser: $(STAMP) ## For the chat page's browser tests: Debian's chromium + chromium-driver (apt, as root) and selenium
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }
	$(PY) -m pip install --quiet -r requirements-browser.txt

check-env: $(STAMP) ## Print Python/torch/transformers/accelerate/peft/trl versions, CUDA, GPU, bf16, attention kernel
	$(PY) scripts/check_env.py

FLASH_ATTN_VERSION ?= 2.8.3.post2
install-flash-attn: $(STAMP) ## Optional flash-attn FLASH_ATTN_VERSION (CUDA only; checks nvcc first; may compile ~1 h)
	@echo "flash-attn builds from source against your CUDA toolkit: it needs torch's CUDA build, an Ampere+ GPU and an"
	@echo "nvcc of torch's CUDA major version. Without it Lumi uses PyTorch SDPA (also fused on a GPU)."
	$(PY) scripts/check_env.py --flash_attn_build
	@# --no-build-isolation builds against our torch, so the build tools must be here: flash-attn's setup.py
	@# imports setuptools (not in 3.12+ venvs) and wheel.bdist_wheel (deprecated from wheel 0.45, hence < 0.46).
	$(PY) -m pip install packaging ninja psutil einops setuptools "wheel<0.46"
	MAX_JOBS=$${MAX_JOBS:-4} $(PY) -m pip install flash-attn==$(FLASH_ATTN_VERSION) --no-build-isolation || \
		{ echo "flash-attn did not install: training will use sdpa. See README 'Troubleshooting'."; exit 1; }
	$(PY) scripts/check_env.py

# --- GPU acceptance (utils/benchmarks/gpu_check.py) ----------------------------------------------------------
# gpu-check never installs: on a machine with its own torch and no network (the device machine) it runs with
# GPU_PY=python3 and the pins of requirements-device.txt carried as wheels (scripts/gpu_check.py says how).
GPU_PY      ?= $(if $(wildcard $(PY)),$(PY),python3)
WHEEL_DIR   ?= .whl
DEVICE_WHEEL_TAGS = --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
	--platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	--platform manylinux1_x86_64

gpu-check: ## GPU acceptance: every CUDA path, one table + gpu_check.json (<=10 min H100; ARGS='--dry_run' on a CPU)
	HF_HUB_OFFLINE=1 $(GPU_PY) scripts/gpu_check.py $(ARGS)

gpu-check-wheels: $(STAMP) ## Download requirements-device.txt as CPython 3.12 wheels into .whl/ for the device machine
	$(PY) -m pip download --no-deps --only-binary=:all: $(DEVICE_WHEEL_TAGS) -d $(WHEEL_DIR) -r requirements-device.txt

# The suite runs in TEST_WORKERS processes (pytest-xdist), a test file per process at a time: most of its time is
# stage subprocesses starting up, which a second worker overlaps (2-core CPU: 7.5 min instead of 10).
TEST_WORKERS ?= 2
PYTEST = HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP) ## Run the whole test suite (<10 min on 2 CPU cores; no network; LUMI_DATA_DIR=<test data> for all)
	$(PYTEST)

test-fast: $(STAMP) ## Run the tests not marked slow
	$(PYTEST) -m "not slow"

# --- Stage 01: data ------------------------------------------------------------------------------
prepare: $(STAMP) ## Prepare a dataset: make prepare CONFIG=config/datasets/<name>.json [ARGS='--force']
	$(PY) scripts/01_prepare_data.py --config_path $(CONFIG) $(ARGS)

prepare-demo: $(STAMP) ## Embedded demo corpus -> data/processed/demo_tiny (offline, ~10 s CPU)
	$(PY) scripts/01_prepare_data.py --config_path config/datasets/demo_tiny.json $(ARGS)

prepare-tinystories: $(STAMP) ## TinyStories (2.1M stories, ~1.9 GB) from the hub -> data/processed/tinystories
	$(PY) scripts/01_prepare_data.py --config_path config/datasets/tinystories.json $(ARGS)

prepare-fineweb: $(STAMP) ## FineWeb-Edu sample-10BT, first file (~2.1 GB, ~0.7B tokens) from the hub
	$(PY) scripts/01_prepare_data.py --config_path config/datasets/fineweb_edu.json $(ARGS)

prepare-prose: $(STAMP) ## Local-files example: novels under $LUMI_DATA_DIR/prose/british-fiction (~30 s CPU)
	$(PY) scripts/01_prepare_data.py --config_path config/datasets/british_fiction.json $(ARGS)

prepare-wt2: $(STAMP) ## WikiText-2 raw from the Hugging Face hub (network)
	$(PY) scripts/01_prepare_data.py --config_path config/datasets/wikitext2.json $(ARGS)

prepare-wt103: $(STAMP) ## WikiText-103 raw from the hub (network; ~540 MB of text, ~10 min)
	$(PY) scripts/01_prepare_data.py --config_path config/datasets/wikitext103.json $(ARGS)

prepare-wiki: $(STAMP) ## English Wikipedia, first 1M articles, from the hub (network)
	$(PY) scripts/01_prepare_data.py --config_path config/datasets/wikipedia_en.json $(ARGS)

prepare-owt: $(STAMP) ## OpenWebText, first 1M documents, from the hub (network)
	$(PY) scripts/01_prepare_data.py --config_path config/datasets/openwebtext.json $(ARGS)

# --- Stage 02: pretraining (DATA=<prepared dataset> BATCH_SIZE= LEARNING_RATE= ARGS='<more flags>') ---------
pretrain-tiny: $(STAMP) ## Pretrain tiny (default 1,000 steps) on DATA (default demo_tiny)
	$(PY) scripts/02_pretrain.py --config_path config/tiny.json $(TRAIN_FLAGS)

pretrain-small: $(STAMP) ## Pretrain small (42M) on DATA (a GPU is strongly advised)
	$(PY) scripts/02_pretrain.py --config_path config/small.json $(TRAIN_FLAGS)

pretrain-base: $(STAMP) ## Pretrain base (124M) on DATA (GPU; see make bench-train for throughput)
	$(PY) scripts/02_pretrain.py --config_path config/base.json $(TRAIN_FLAGS)

resume-pretrain-tiny: $(STAMP) ## Resume the tiny run from its newest complete checkpoint
	$(PY) scripts/02_pretrain.py --config_path config/tiny.json --resume_from_checkpoint auto $(TRAIN_FLAGS)

# --- Several GPUs of one machine: DDP through the shipped Accelerate config (FSDP/DeepSpeed are refused) -----------
NUM_GPUS    ?= 2
ACCELERATE_CONFIG ?= config/accelerate/ddp.yaml
LAUNCH       = $(VENV)/bin/accelerate launch --config_file $(ACCELERATE_CONFIG) --num_processes $(NUM_GPUS)

pretrain-multi-gpu: $(STAMP) ## Pretrain PRESET (default base) with DDP on NUM_GPUS GPUs (config/accelerate/ddp.yaml)
	$(LAUNCH) scripts/02_pretrain.py --config_path $(or $(PRESET),config/base.json) $(TRAIN_FLAGS)

# --- Stages 03-04: fine-tuning (SFT_MODEL= SFT_DATASET= DPO_MODEL= DPO_DATASET= RUN_NAME= ARGS='<more flags>') -------
SFT_MODEL   ?= checkpoints/pretrain/tiny/final
SFT_DATASET ?= data/processed/demo_tiny/demo/sft_train.json
RUN_NAME    ?= demo
DPO_MODEL   ?= checkpoints/sft/$(RUN_NAME)/merged
DPO_DATASET ?= data/processed/demo_tiny/demo/dpo_train.json

sft: $(STAMP) ## SFT of SFT_MODEL on SFT_DATASET -> checkpoints/sft/RUN_NAME (demo: ~3 min CPU; ARGS='--overwrite')
	$(PY) scripts/03_sft.py --config_path config/sft.json --model_path $(SFT_MODEL) --dataset_path $(SFT_DATASET) \
		--output_dir checkpoints/sft --run_name $(RUN_NAME) $(ARGS)

dpo: $(STAMP) ## DPO (LoRA) of DPO_MODEL on DPO_DATASET -> checkpoints/dpo/RUN_NAME (demo: ~2 min CPU)
	$(PY) scripts/04_dpo.py --config_path config/dpo.json --model_path $(DPO_MODEL) --dataset_path $(DPO_DATASET) \
		--output_dir checkpoints/dpo --run_name $(RUN_NAME) $(ARGS)

sft-alpaca: $(STAMP) ## SFT of SFT_MODEL on tatsu-lab/alpaca from the hub (config/sft_alpaca.json; small/base, GPU)
	$(PY) scripts/03_sft.py --config_path config/sft_alpaca.json --model_path $(SFT_MODEL) --dataset_path tatsu-lab/alpaca \
		--output_dir checkpoints/sft --run_name $(RUN_NAME) $(ARGS)

dpo-hh: $(STAMP) ## DPO (LoRA) of DPO_MODEL on Anthropic/hh-rlhf from the hub (config/dpo_hh_rlhf.json; GPU)
	$(PY) scripts/04_dpo.py --config_path config/dpo_hh_rlhf.json --model_path $(DPO_MODEL) --dataset_path Anthropic/hh-rlhf \
		--output_dir checkpoints/dpo --run_name $(RUN_NAME) $(ARGS)

sft-multi-gpu: $(STAMP) ## make sft with DDP on NUM_GPUS GPUs; only the main process writes the run directory
	$(LAUNCH) scripts/03_sft.py --config_path config/sft.json --model_path $(SFT_MODEL) --dataset_path $(SFT_DATASET) \
		--output_dir checkpoints/sft --run_name $(RUN_NAME) $(ARGS)

dpo-multi-gpu: $(STAMP) ## make dpo with DDP on NUM_GPUS GPUs
	$(LAUNCH) scripts/04_dpo.py --config_path config/dpo.json --model_path $(DPO_MODEL) --dataset_path $(DPO_DATASET) \
		--output_dir checkpoints/dpo --run_name $(RUN_NAME) $(ARGS)

# --- Stage 05: evaluation (MODEL=<model dir>; data from the hub, the LUMI_DATA_DIR mirror, or EVAL_DATA=<dir>) -----
MODEL       ?= checkpoints/pretrain/tiny/final
EVAL_DATA   ?=
RESULTS     ?= $(lastword $(sort $(wildcard evaluation_results/*/results.json)))
EVAL_FLAGS   = --model_path $(MODEL) $(if $(EVAL_DATA),--data_dir $(EVAL_DATA)) $(ARGS)

evaluate: $(STAMP) ## Evaluate MODEL: WikiText-2, HellaSwag, ARC-E/C, BoolQ, demo MC, smoke prompts
	$(PY) scripts/05_evaluate.py $(EVAL_FLAGS)

evaluate-quick: $(STAMP) ## Quick evaluation: 200 items per task and the five quick prompts
	$(PY) scripts/05_evaluate.py $(EVAL_FLAGS) --fast_mode

evaluate-detailed: $(STAMP) ## Full evaluation with every smoke response and score in report.md
	$(PY) scripts/05_evaluate.py $(EVAL_FLAGS) --detailed_output

assess-performance: $(STAMP) ## Verdicts and advice for RESULTS (default: the newest evaluation_results/*/results.json)
	$(PY) scripts/assess_performance.py $(RESULTS)

compare-lm-eval: $(STAMP) ## Item-by-item agreement with lm-evaluation-harness (needs make install-extra)
	$(PY) scripts/compare_lm_eval.py --model_path $(MODEL) $(if $(EVAL_DATA),--data_dir $(EVAL_DATA)) $(ARGS)

# --- Stage 06: serving (MODEL=<model dir> ARGS='<more flags>', e.g. --temperature 0 --template instruct) ----------
serve: $(STAMP) ## Chat with MODEL in this terminal: streamed answers, /help for commands, Ctrl-C stops an answer
	$(PY) scripts/06_serve.py --model_path $(MODEL) --mode interactive $(ARGS)

serve-api: $(STAMP) ## OpenAI-compatible API for MODEL on http://127.0.0.1:8000 (ARGS='--port 9000 --api_key KEY')
	$(PY) scripts/06_serve.py --model_path $(MODEL) --mode api $(ARGS)

OUTTYPE ?= f16
export-gguf: $(STAMP) ## GGUF for llama.cpp / Ollama from MODEL (final/, merged/ or adapter/): OUTTYPE=f32|f16|bf16|q8_0
	$(PY) scripts/07_export.py --model_path $(MODEL) --outtype $(OUTTYPE) $(ARGS)

serve-web: $(STAMP) ## Chat with MODEL in your browser: the API server prints the page's URL (http://127.0.0.1:8000/)
	$(PY) scripts/06_serve.py --model_path $(MODEL) --mode api $(ARGS)

# --- Sessions: stages in order under a time budget; logs and report.md in sessions/<timestamp>-<name>/ ---------
session-quick: $(STAMP) ## Whole pipeline on the demo corpus, offline: data, pretrain, SFT, DPO, eval, API (<=15 min CPU)
	$(PY) scripts/session.py quick

session-prototype: $(STAMP) ## 2 h (4090): tiny on TinyStories from the hub, then the benchmarks (ARGS=--short: minutes, CPU)
	$(PY) scripts/session.py prototype $(ARGS)

session-experiment: $(STAMP) ## 4 h (4090): small on FineWeb-Edu, SFT on Alpaca, DPO on hh-rlhf, benchmarks (ARGS=--short)
	$(PY) scripts/session.py experiment $(ARGS)

session-ablation: $(STAMP) ## Equal-time ablations of tiny on DATA: baseline, no norm, post-norm, NoPE (4 x 10 min)
	$(PY) scripts/experiment.py --config_path config/experiments/ablations.json --data_path $(DATA) $(ARGS)

session-optimizers: $(STAMP) ## Equal-time AdamW vs Muon on DATA, each at its best of 3 learning rates (6 x 10 min)
	$(PY) scripts/experiment.py --config_path config/experiments/optimizers.json --data_path $(DATA) $(ARGS)

session-recipe: $(STAMP) ## Equal-token plain recipe vs WSD, zero-init projections and both (the default) on DATA (4 runs)
	$(PY) scripts/experiment.py --config_path config/experiments/recipe.json --data_path $(DATA) $(ARGS)

session-evaluation: $(STAMP) ## 1 h: deep evaluation of every final/ and merged/ model under checkpoints/
	$(PY) scripts/session.py evaluation

session-debug: $(STAMP) ## Environment, data and checkpoint diagnostics: what is wrong and how to fix it
	$(PY) scripts/session.py debug

session-architecture: $(STAMP) ## Validate every preset: exact counts, forward/backward, 24 GB memory estimates
	$(PY) scripts/session.py architecture

session-status: $(STAMP) ## Datasets, checkpoints, results and sessions at a glance, and the next command
	$(PY) scripts/session.py status

session-cleanup: $(STAMP) ## Remove temporary dirs, incomplete checkpoints and all but the 10 newest session logs
	$(PY) scripts/session.py cleanup

# --- Other targets ----------------------------------------------------------------------------------------
RAW_DATASET ?=
BACKUP_DIR  ?= backups

pipeline-full: $(STAMP) ## Every stage with default settings: prepare (RAW_DATASET= or demo), pretrain, SFT, DPO, eval
	$(if $(RAW_DATASET),$(PY) scripts/01_prepare_data.py --source local --name raw --input_path $(RAW_DATASET),$(MAKE) prepare-demo)
	$(PY) scripts/02_pretrain.py --config_path $(or $(PRESET),config/tiny.json) --data_path $(if $(RAW_DATASET),data/processed/raw,$(DATA)) --output_dir checkpoints/pretrain/pipeline $(if $(wildcard checkpoints/pretrain/pipeline/latest),--resume_from_checkpoint auto) $(TRAIN_FLAGS)
	$(PY) scripts/03_sft.py --config_path config/sft.json --model_path checkpoints/pretrain/pipeline/final --dataset_path $(SFT_DATASET) --output_dir checkpoints/sft --run_name pipeline
	$(PY) scripts/04_dpo.py --config_path config/dpo.json --model_path checkpoints/sft/pipeline/merged --dataset_path $(DPO_DATASET) --output_dir checkpoints/dpo --run_name pipeline
	$(PY) scripts/05_evaluate.py --model_path checkpoints/dpo/pipeline/merged $(if $(wildcard $(EVAL_DATA)),--data_dir $(EVAL_DATA)) --run_name pipeline

create-sample-datasets: $(STAMP) ## Write data/sft_dataset.json and data/dpo_dataset.json in the documented formats
	$(PY) scripts/create_sample_datasets.py

test-pipeline: $(STAMP) ## A tiny end-to-end smoke of every stage (~2 min CPU)
	$(PY) scripts/session.py test-pipeline

backup: ## Archive config/ and checkpoints/ into backups/lumi-<date>.tar.gz
	@mkdir -p $(BACKUP_DIR)
	tar -czf $(BACKUP_DIR)/lumi-$$(date +%Y%m%d-%H%M%S).tar.gz config $(wildcard checkpoints)
	@ls -lh $(BACKUP_DIR) | tail -n 3

clean: ## Remove caches, temporary build dirs and old session logs (keeps data, checkpoints, results)
	find . -name __pycache__ -type d -prune -exec rm -rf {} + ; rm -rf .pytest_cache
	$(if $(wildcard $(STAMP)),$(PY) scripts/session.py cleanup,)

clean-checkpoints: ## Delete checkpoints/ after asking for confirmation
	@read -p "Delete every checkpoint under checkpoints/? [y/N] " answer; \
		if [ "$$answer" = "y" ]; then rm -rf checkpoints && echo "deleted checkpoints/"; else echo "kept"; fi

monitor: ## GPU use via nvidia-smi every 2 s, or CPU and memory use without a GPU (Ctrl-C to stop)
	@if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -l 2; \
		else while true; do date +%T; top -bn1 | head -n 5 | tail -n 3; free -h | head -n 2; sleep 2; done; fi

config-rtx4090: $(STAMP) ## Print and write config/rtx4090.json: batch sizes for tiny/small/base on a 24 GB card
	$(PY) scripts/session.py config-rtx4090

# --- Benchmarks (figures printed; never timed tests) ---------------------------------------------
bench: bench-data bench-train bench-serve bench-export bench-finetune ## Run every benchmark but bench-recipe (~2 h on its own)

bench-recipe: $(STAMP) ## AdamW vs Muon (3 LRs each) and the ablations, tiny on $LUMI_DATA_DIR prose, 10 min a run (~2 h CPU)
	$(PY) scripts/bench_recipe.py $(ARGS)

bench-data: $(STAMP) ## Stage 01 at scale, both engines: distinct short docs from $LUMI_DATA_DIR prose at 1x and 4x, memory, recall (~7 min CPU)
	$(PY) scripts/bench_data.py $(ARGS)

bench-train: $(STAMP) ## Stage 02 tokens/s, MFU, memory and checkpoint time vs a plain-PyTorch step (~10 min CPU; ARGS='--quick')
	$(PY) scripts/bench_train.py $(ARGS)

bench-finetune: $(STAMP) ## LoRA vs full SFT of the tiny model: steps/s, tokens/s, peak memory (~3 min CPU)
	$(PY) scripts/bench_finetune.py $(ARGS)

bench-export: $(STAMP) ## Stage 07: GGUF export time and size per type (tiny, base); llama.cpp vs our decode tok/s (~10 min CPU)
	$(PY) scripts/bench_export.py $(ARGS)

bench-serve: $(STAMP) ## Stage 06 TTFT and decode tok/s at batch 1; 64 concurrent streams: 200/429, p50/p95, memory (~2 min CPU)
	$(PY) scripts/bench_serve.py $(if $(filter-out file,$(origin MODEL)),--model_path $(MODEL)) $(ARGS)

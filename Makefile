# Every target sets itself up: a fresh clone needs only `make demo` or `make test`.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo demo-lora demo-tools test test-unit lint bench clean

install:
	@bash scripts/install.sh

# A second demo needs another name (a run is never overwritten): make demo NAME=demo2
NAME ?= demo

demo: install
	$(BIN)/forkrl prepare-model
	$(BIN)/forkrl train --config configs/demo.yaml tracking.name=$(NAME)

# The demo's task and settings with a rank-16 LoRA policy (README "LoRA"; bench/README.md "LoRA demo").
LORA_NAME ?= demo-lora
LORA_ARGS ?= learner.lora.rank=16 learner.lora.alpha=32 learner.lr=3e-4
demo-lora: install
	$(BIN)/forkrl prepare-model
	$(BIN)/forkrl train --config configs/demo.yaml tracking.name=$(LORA_NAME) $(LORA_ARGS)

# The model learns to run Python while it reasons (configs/tools.yaml; README "Tool use").
TOOLS_NAME ?= tools
demo-tools: install
	$(BIN)/forkrl prepare-model
	$(BIN)/forkrl train --config configs/tools.yaml tracking.name=$(TOOLS_NAME)

test: install lint
	$(BIN)/python -m pytest tests

lint: install  # unused imports, undefined names: cheap, and they hide real mistakes
	$(BIN)/python -m pyflakes actors learner rewards envs launch tests bench

test-unit: install
	$(BIN)/python -m pytest tests -m unit

bench: install
	$(BIN)/python bench/reward_throughput.py

clean:
	rm -rf runs .pytest_cache

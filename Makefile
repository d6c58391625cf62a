# Two commands on a fresh machine:
#   make demo   - build the synthetic corpus, pretrain, fine-tune, evaluate, export, print a results table
#   make test   - the whole test suite
# Both create .venv and install the project (with torch/torchaudio/torchvision pinned together) when needed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.audiossl-installed
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet "pip>=24"
	# One pip call: torch, torchaudio and torchvision are pinned together in pyproject.toml.
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -c "import torch, torchaudio, torchvision, audiossl; print('torch', torch.__version__, 'torchaudio', torchaudio.__version__, 'audiossl', audiossl.__version__)"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/audiossl demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/audiossl bench

clean:
	rm -rf $(DEMO_OUT) .pytest_cache

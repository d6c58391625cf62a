# Two commands on a fresh machine:
#   make demo   - build the synthetic corpus, pretrain, fine-tune, evaluate, export, print a results table
#   make test   - the whole test suite
# Both build .venv from the lock (requirements/lock.txt, exact versions and hashes) when it is missing or older than
# the lock, and check that torch, torchvision, torchaudio and audiossl load together before anything else.
#
#   make lock         - recompile the lock from pyproject.toml + requirements/stack.in (uv pip compile)
#   make test-latest  - the suite in .venv-latest, built from the newest releases pyproject.toml's ranges allow

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LOCK   := requirements/lock.txt
PARITY := requirements/parity.txt
STAMP  := $(VENV)/.audiossl-installed
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=
LATEST ?= .venv-latest
# Free disk the venv build needs: the installed lock is ~6.5 GiB, plus pip's unpacked wheels while it installs.
NEED_KB ?= 9437184

.PHONY: demo test install lock test-latest bench clean

# A venv older than the lock is rebuilt from scratch, so it holds exactly what the lock lists.
$(STAMP): $(LOCK) $(PARITY) pyproject.toml
	@if [ -d $(VENV) ] && [ -f $(STAMP) ] && [ $(LOCK) -nt $(STAMP) -o $(PARITY) -nt $(STAMP) ]; then echo "$(LOCK) or $(PARITY) changed: rebuilding $(VENV)"; rm -rf $(VENV); fi
	@avail_kb=$$(df -Pk $(dir $(abspath $(VENV))) | awk 'NR==2 {print $$4}'); if [ "$$avail_kb" -lt $(NEED_KB) ]; then \
	  echo "error: building $(VENV) from the lock needs about $$(( $(NEED_KB) / 1048576 )) GiB of free disk (the CUDA torch wheels); $$(( avail_kb / 1048576 )) GiB free under $(dir $(abspath $(VENV)))" >&2; exit 1; fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# One resolver call over the whole lock (every package pinned with its hashes; nothing else is resolved) ...
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r $(LOCK)
	# ... then the project itself, editable, with no further dependencies and no download.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check --disable-pip-version-check
	# The parity tests' reference implementations: pinned with hashes, without their (conflicting) dependencies.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r $(PARITY)
	$(BIN)/python requirements/check_env.py --lock $(LOCK)
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/audiossl demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/audiossl bench

# uv comes from the lock itself; the lock targets the CI/dev platform (Linux x86_64, CPython 3.11).
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml requirements/stack.in --extra test --extra onnx \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes \
	  --custom-compile-command "make lock" --output-file $(LOCK)

# Not part of CI (a second multi-GB install). uv resolves the newest releases the ranges allow, ignoring the lock and
# any pip constraint of the machine; run it before moving the lock and when a dependency announces a release.
test-latest: $(STAMP)
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(BIN)/uv pip install --python $(LATEST)/bin/python --resolution highest -e ".[test,onnx]"
	$(LATEST)/bin/python requirements/check_env.py
	$(LATEST)/bin/python -m pip freeze > $(LATEST)/freeze.txt
	$(LATEST)/bin/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(DEMO_OUT) .pytest_cache

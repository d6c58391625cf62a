"""The environment the suite runs in: torch, torchvision and torchaudio load together, at the locked versions."""

import os
import subprocess
import sys

import pytest
from helpers import ROOT

LOCK = os.path.join(ROOT, "requirements", "lock.txt")
CHECK = os.path.join(ROOT, "requirements", "check_env.py")


def test_torch_torchvision_torchaudio_load_together():
    """Each binary runs a compiled operator (a torchaudio built for another torch fails here, loudly)."""
    r = subprocess.run([sys.executable, CHECK], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_lock_pins_every_package_exactly():
    sys.path.insert(0, os.path.dirname(CHECK))
    from check_env import locked_versions

    pins = locked_versions(LOCK)
    for name in ("torch", "torchaudio", "torchvision", "lightning", "timm", "webdataset", "jsonargparse",
                 "transformers", "onnx", "onnxruntime", "numpy", "uv"):
        assert name in pins, f"{name} is not pinned in {LOCK}"
    entries, current = [], None  # each requirement with its continuation lines
    for line in open(LOCK):
        if line.strip() and not line.startswith((" ", "#")):
            current = [line]
            entries.append(current)
        elif line.startswith(" ") and current is not None:
            current.append(line)
    assert len(entries) == len(pins) > 50
    for e in entries:
        assert "==" in e[0] and any("--hash=sha256:" in ln for ln in e), e[0]


@pytest.mark.skipif(not os.path.exists(os.path.join(os.path.dirname(sys.executable), "..", ".audiossl-installed")),
                    reason="not the Makefile's locked .venv (the suite runs in another environment, e.g. test-latest)")
def test_environment_is_the_lock():
    r = subprocess.run([sys.executable, CHECK, "--lock", LOCK], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

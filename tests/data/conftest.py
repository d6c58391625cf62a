"""Fixtures for the data tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from datahelpers import build, make_clips


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory) -> Path:
    """30 train clips (6 shards of 5, folds 1-3, weights) + 7 eval clips (2 shards), 4 single-label classes."""
    root = tmp_path_factory.mktemp("tiny") / "ds"
    clips = make_clips(30, "train", fold_of=lambda i: 1 + i % 3, weight_of=lambda i: 1.0 + i) + make_clips(7, "eval")
    build(root, clips, params={"clip_seconds": 0.25})
    return root

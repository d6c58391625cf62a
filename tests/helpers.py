"""Shared test fixtures: a small synthetic dataset written once per session, and tiny-run helpers."""

from __future__ import annotations

import glob
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> str:
    """64 training + 16 evaluation clips of the built-in synthetic corpus (2 s, 16 classes, multi-label)."""
    from data_prep.synth import convert
    from audiossl.data.writer import WriterOptions

    out = tmp_path_factory.mktemp("synth") / "data"
    convert(str(out), num_clips=64, eval_clips=16, seed=123, options=WriterOptions(workers=1, shard_size=16, progress=False))
    return str(out)


@pytest.fixture(scope="module")
def pretrained(synth_root, tmp_path_factory) -> str:
    """An eat_tiny pretraining checkpoint after 2 steps on ``synth_root``."""
    from audiossl.cli.train import pretrain

    root = str(tmp_path_factory.mktemp("pretrained"))
    assert pretrain(["--config", config("pretrain", "eat_tiny.yaml"), "--data.root", synth_root,
                     "--trainer.max_steps", "2", "--trainer.default_root_dir", root, "--data.num_workers", "0",
                     "--trainer.enable_progress_bar", "false"]) == 0
    return os.path.join(root, "checkpoints", "last.ckpt")


def tb_scalars(run_dir: str, tag: str) -> dict[int, float]:
    """``{step: value}`` of one scalar tag from a run directory's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[int, float] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        ea = EventAccumulator(path, size_guidance={"scalars": 0})
        ea.Reload()
        if tag in ea.Tags()["scalars"]:
            out.update({e.step: e.value for e in ea.Scalars(tag)})
    return out


def config(*parts: str) -> str:
    return os.path.join(CONFIGS, *parts)

"""The default window: ``clip_seconds`` from the manifest's duration percentiles, printed and saved in the hparams."""

from __future__ import annotations

import functools
import json
import math

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from datahelpers import build, render_tone

from audiossl.data import AudioDataModule
from audiossl.data.writer import Clip

DURATIONS = [0.1 * (i + 1) for i in range(19)] + [9.0]  # 0.1 .. 1.9 s and one long recording


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    root = tmp_path_factory.mktemp("lengths") / "ds"
    clips = []
    for i, seconds in enumerate(DURATIONS):
        meta = {"id": str(i), "labels": [f"c{i % 2}"], "label_idx": [i % 2], "source": "t"}
        clips.append(Clip(f"k{i}", "train", meta, render=functools.partial(render_tone, seconds, 300.0 + i)))
    build(root, clips, num_classes=2, shard_size=5)
    return root


def test_default_clip_seconds_is_the_95th_percentile_rounded_up(varied, capsys):
    p95 = float(np.percentile(DURATIONS, 95))  # 2.255 s: the one 9 s file does not set the window
    expected = math.ceil(p95 * 10) / 10
    assert expected == pytest.approx(2.3)
    dm = AudioDataModule(str(varied), batch_size=4, num_workers=0)
    assert dm.hparams["clip_seconds"] is None
    assert dm.clip_seconds == pytest.approx(expected) and dm.clip_samples == round(expected * 16000)
    out = capsys.readouterr().err
    assert "clip_seconds not set, using 2.3 s (95th percentile of the train clip durations, 2.25 s" in out
    assert "longest clip 9 s" in out
    assert dm.hparams["clip_seconds"] == pytest.approx(expected)
    dm.clip_seconds
    assert capsys.readouterr().err == ""  # printed once
    # the front end's window for it: kaldi frames of 2.3 s (228) rounded up to whole 16-frame patches
    assert dm.default_target_frames(frame_shift_ms=10, patch_size=16) == 240
    assert dm.default_target_frames(frame_shift_ms=10, patch_size=2) == 228
    # batches hold that window
    batch = next(iter(dm.train_dataloader()))
    assert batch["audio"].shape == (4, round(2.3 * 16000))
    assert int(batch["num_samples"].max()) <= round(2.3 * 16000)
    # an explicit value wins and nothing is printed
    fixed = AudioDataModule(str(varied), clip_seconds=1.0)
    assert fixed.clip_seconds == 1.0 and fixed.default_target_frames() == 112  # 98 frames -> 7 patches
    assert "clip_seconds" not in capsys.readouterr().err


def test_a_manifest_without_percentiles_falls_back_to_the_longest_clip(varied, tmp_path, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(varied, old)
    d = json.loads((old / "manifest.json").read_text())
    del d["splits"]["train"]["duration_percentiles"]
    (old / "manifest.json").write_text(json.dumps(d))
    dm = AudioDataModule(str(old))
    assert dm.clip_seconds == pytest.approx(9.0)
    assert "the longest clip of train; this manifest records no duration percentiles" in capsys.readouterr().err


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(1, 2)

    def training_step(self, batch, _):
        return torch.nn.functional.cross_entropy(self.lin(batch["audio"].abs().mean(1, keepdim=True)), batch["target"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_chosen_clip_seconds_is_saved_in_hparams_yaml_and_the_checkpoint(varied, tmp_path):
    dm = AudioDataModule(str(varied), batch_size=4, num_workers=0)
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="run")
    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=logger, max_steps=1,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(_Tiny(), datamodule=dm)
    hparams = yaml.safe_load(open(f"{logger.log_dir}/hparams.yaml"))
    assert hparams["clip_seconds"] == pytest.approx(2.3)
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    ckpt = torch.load(tmp_path / "x.ckpt", weights_only=True)
    assert ckpt["datamodule_hyper_parameters"]["clip_seconds"] == pytest.approx(2.3)


def test_the_front_end_window_follows_a_frame_shift_given_as_text(varied):
    """``--model.front_end.frame_shift 5`` reaches the front-end dict as the text '5'; the window uses the number."""
    from audiossl.objectives.base import data_target_length

    dm = AudioDataModule(str(varied), clip_seconds=1.0)
    fe = data_target_length({"frame_shift": "5", "frame_length": "25"}, dm, 16)
    assert fe["target_length"] == dm.default_target_frames(frame_shift_ms=5.0, patch_size=16) == 208  # 196 -> 13 x 16
    assert fe["frame_shift"] == "5"  # the rest of the dict is left for FrontEndConfig to type

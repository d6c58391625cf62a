"""``audiossl stats``: fbank mean/std against torchaudio's kaldi fbank, sampling, the manifest, the DataModule."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
import torchaudio
from datahelpers import build, render_tone, shard_keys

from audiossl.frontend import audio
from audiossl.cli.main import main as cli_main
from audiossl.data import AudioDataModule
from audiossl.data.manifest import read_manifest
from audiossl.data.pipeline import read_shard
from audiossl.data.stats import compute_stats
from audiossl.data.writer import Clip


def _reference(root, split, keys=None):
    """Pooled mean/std of torchaudio's kaldi fbank with the reference settings, one clip at a time."""
    values = []
    m = read_manifest(root)
    for s in m.split(split).shards:
        for _, key, mem in read_shard(str(root / s.path)):
            if keys is not None and key not in keys:
                continue
            w = audio.load(mem["flac"], 16000)
            fb = torchaudio.compliance.kaldi.fbank(w[None].double(), htk_compat=True, sample_frequency=16000,
                                                   use_energy=False, window_type="hanning", num_mel_bins=128,
                                                   dither=0.0, frame_shift=10)
            values.append(fb.flatten())
    v = torch.cat(values)
    return v.mean().item(), v.std(unbiased=False).item(), len(values)


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    """Clips of different lengths and levels, so padding or per-clip averaging would change the numbers."""
    root = tmp_path_factory.mktemp("stats") / "ds"
    clips = []
    for i in range(9):
        seconds = 0.3 + 0.15 * i
        meta = {"id": str(i), "labels": ["c0"], "label_idx": [0], "source": "t"}
        render = functools.partial(render_tone, seconds, 150.0 * (i + 1))
        clips.append(Clip(f"clip_{i}", "train", meta, render=render))
    build(root, clips, num_classes=1, shard_size=4)
    return root


def test_stats_match_torchaudio_fbank_pooled_over_frames(varied):
    stats = compute_stats(varied, "train", progress=False)
    mean, std, n = _reference(varied, "train")
    assert stats["clips"] == n == 9 and stats["bad_clips"] == 0
    assert stats["mean"] == pytest.approx(mean, abs=1e-4) and stats["std"] == pytest.approx(std, abs=1e-4)
    frames = sum(1 + (round((0.3 + 0.15 * i) * 16000) - 400) // 160 for i in range(9))
    assert stats["frames"] == frames  # no padding frames


def test_stats_on_a_seeded_sample_and_the_cli(varied, capsys):
    a = compute_stats(varied, "train", max_clips=4, seed=7, progress=False)
    b = compute_stats(varied, "train", max_clips=4, seed=7, progress=False)
    c = compute_stats(varied, "train", max_clips=4, seed=8, progress=False)
    assert a == b and a["clips"] == 4 and a["mean"] != c["mean"]
    chosen = np.sort(np.random.default_rng(7).choice(9, size=4, replace=False))  # positions in shard order
    order = shard_keys(varied, "train")
    mean, std, _ = _reference(varied, "train", {order[i] for i in chosen})
    assert a["mean"] == pytest.approx(mean, abs=1e-4) and a["std"] == pytest.approx(std, abs=1e-4)

    assert AudioDataModule(str(varied)).stats is None
    assert cli_main(["stats", str(varied), "--quiet"]) == 0
    assert "fbank mean" in capsys.readouterr().out
    saved = json.loads((varied / "manifest.json").read_text())["stats"]
    full = compute_stats(varied, progress=False)
    assert saved == full
    dm = AudioDataModule(str(varied))
    assert dm.stats["mean"] == full["mean"] and dm.stats["std"] == full["std"]
    assert cli_main(["stats", str(varied), "--split", "nope", "--quiet"]) == 1
    assert "has ['train']" in capsys.readouterr().err

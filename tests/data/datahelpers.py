"""Helpers for the data tests: real audio files, real shard folders (fixtures are in conftest.py)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from audiossl.data.labels import LabelSpace
from audiossl.data.writer import Clip, WriterOptions, write_dataset


def tone(seconds: float, rate: int, freq: float, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    """A sine ``[N]`` (or ``[N, channels]`` with per-channel phase) in [-amp, amp]."""
    t = np.arange(int(round(seconds * rate))) / rate
    x = amp * np.sin(2 * np.pi * freq * t)
    if channels == 1:
        return x.astype(np.float32)
    return np.stack([amp * np.sin(2 * np.pi * freq * t + c) for c in range(channels)], axis=1).astype(np.float32)


def write_audio(path: Path, seconds: float = 0.5, rate: int = 16000, freq: float = 440.0, channels: int = 1,
                fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subtype = "PCM_16" if fmt in (None, "WAV", "FLAC") else None
    sf.write(str(path), tone(seconds, rate, freq, channels), rate, format=fmt, subtype=subtype)
    return path


def render_tone(seconds: float, freq: float, rate: int = 16000):
    """A picklable ``Clip.render``."""
    return tone(seconds, rate, freq), rate


def make_clips(n: int, split: str = "train", seconds: float = 0.25, num_classes: int = 4, fold_of=None,
               weight_of=None) -> list[Clip]:
    """``n`` rendered tones; clip i has label ``i % num_classes`` (and fold/weight from the given functions)."""
    clips = []
    for i in range(n):
        label = i % num_classes
        meta = {"id": f"{split}/{i}", "labels": [f"c{label}"], "label_idx": [label], "source": "test"}
        if fold_of is not None:
            meta["fold"] = fold_of(i)
        if weight_of is not None:
            meta["weight"] = weight_of(i)
        render = functools.partial(render_tone, seconds, 200.0 + 37.0 * i)
        clips.append(Clip(key=f"{split}_{i:04d}", split=split, meta=meta, render=render))
    return clips


def build(root: Path, clips: list[Clip], num_classes: int = 4, multi_label: bool = False, shard_size: int = 5,
          workers: int = 0, **kw):
    return write_dataset(root, clips, labels=LabelSpace.from_names([f"c{i}" for i in range(num_classes)]),
                         multi_label=multi_label, options=WriterOptions(shard_size=shard_size, workers=workers,
                                                                        progress=False), **kw)


def shard_keys(root: Path, split: str) -> list[str]:
    """Every sample key of a split, read straight from its tar files."""
    from audiossl.data.manifest import read_manifest
    from audiossl.data.pipeline import read_shard

    m = read_manifest(root)
    return [key for s in m.split(split).shards for _, key, _ in read_shard(str(root / s.path))]


def read_json(root: Path, split: str) -> dict[str, dict]:
    from audiossl.data.manifest import read_manifest
    from audiossl.data.pipeline import read_shard

    m = read_manifest(root)
    return {key: json.loads(mem["json"]) for s in m.split(split).shards
            for _, key, mem in read_shard(str(root / s.path))}

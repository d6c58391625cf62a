"""Normalisation statistics of a dataset's log-mel features (``audiossl stats DIR``).

The mean and standard deviation of every log-mel value — all frames and all mel bins of each clip, no padding
frames — of the front end's kaldi fbank *before* normalisation, over a split or a seeded random sample of its
clips. They are written into the manifest's ``stats``; models normalise with ``(x - mean) / (2 * std)``
(``FrontEndConfig(mean=..., std=...)``; ``AudioDataModule.stats`` hands them over).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch

from audiossl.frontend import audio
from audiossl.data import storage
from audiossl.data.manifest import read_manifest, write_manifest
from audiossl.data.pipeline import read_shard
from audiossl.errors import ConfigError
from audiossl.frontend.features import FrontEndConfig, kaldi_fbank

log = logging.getLogger("audiossl.data")
_BATCH = 32
# The front-end settings the statistics depend on (a stats record without the last two was measured with their
# defaults: Hann window, waveform at scale 1).
STATS_KEYS = ("sample_rate", "num_mel_bins", "frame_length", "frame_shift", "window_type", "waveform_scale")
_STATS_DEFAULTS = {"window_type": "hanning", "waveform_scale": 1.0}


def uses_stats(fe: FrontEndConfig) -> bool:
    """Whether ``fe`` normalises with dataset statistics (the kaldi fbank); ``mel_db_minmax`` scales each clip by
    its own range."""
    return fe.spectrogram == "kaldi"


def _require_stats(fe: FrontEndConfig, where: str) -> None:
    if not uses_stats(fe):
        raise ConfigError(f"{where}the {fe.spectrogram} front end scales each clip by its own range and uses no "
                          "dataset statistics; nothing to measure")


def read_config_yaml(path: str | Path) -> dict:
    """A training config YAML as a dict (``ConfigError``, a ValueError, when it cannot be read or is not a mapping)."""
    import yaml

    try:
        cfg = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the config: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: not a config (a YAML mapping)")
    return cfg


def config_front_end(path: str | Path) -> FrontEndConfig:
    """The front end a training config YAML sets (``model.front_end`` or ``model.init_args.front_end``; unset keys
    keep their defaults), for measuring statistics with the features that run will see."""
    cfg = read_config_yaml(path)
    model = cfg.get("model")
    model = model.get("init_args", model) if isinstance(model, dict) else {}
    fe = FrontEndConfig.from_dict((model.get("front_end") if isinstance(model, dict) else None) or {})
    _require_stats(fe, f"{path}: ")
    return FrontEndConfig.from_dict({k: getattr(fe, k) for k in STATS_KEYS})


def stats_mismatch(stats: dict | None, front_end: FrontEndConfig) -> list[str]:
    """The settings (``name stats/ours``) where the front end ``stats`` were measured with differs from
    ``front_end``; empty when they agree, the stats do not record theirs, or ``front_end`` uses no statistics."""
    theirs = (stats or {}).get("front_end") or {}
    if not theirs or not uses_stats(front_end):
        return []
    theirs = {**_STATS_DEFAULTS, **theirs}
    out = []
    for k in STATS_KEYS:
        a, b = theirs.get(k), getattr(front_end, k)
        if a is None:
            continue
        if isinstance(b, str) and a != b:
            out.append(f"{k} {a}/{b}")
        elif not isinstance(b, str) and abs(float(a) - float(b)) > 1e-9:
            out.append(f"{k} {float(a):g}/{float(b):g}")
    return out


def _chosen_positions(counts: list[int], max_clips: int | None, seed: int) -> list[np.ndarray | None]:
    """Per shard: the positions to read (``None``: all)."""
    total = sum(counts)
    if max_clips is None or max_clips >= total:
        return [None] * len(counts)
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=max_clips, replace=False))
    bounds = np.cumsum([0] + counts)
    return [chosen[(chosen >= a) & (chosen < b)] - a for a, b in zip(bounds[:-1], bounds[1:])]


def compute_stats(
    root: str | Path,
    split: str = "train",
    max_clips: int | None = None,
    seed: int = 0,
    front_end: FrontEndConfig | None = None,
    progress: bool = True,
) -> dict:
    """fbank ``{"mean", "std", "frames", "clips", ...}`` over ``split`` (or ``max_clips`` clips drawn with ``seed``)."""
    from tqdm import tqdm

    fe = front_end or FrontEndConfig()
    _require_stats(fe, "")
    info = read_manifest(root).split(split)
    plan = _chosen_positions([s.samples for s in info.shards], max_clips, seed)
    n_clips = sum(s.samples if p is None else len(p) for s, p in zip(info.shards, plan))
    total = torch.zeros((), dtype=torch.float64)
    total_sq = torch.zeros((), dtype=torch.float64)
    frames = clips = bad = 0
    pending: list[torch.Tensor] = []

    def flush():
        nonlocal total, total_sq, frames
        by_length: dict[int, list[torch.Tensor]] = {}
        for w in pending:
            by_length.setdefault(w.shape[0], []).append(w)
        for waves in by_length.values():
            batch = torch.stack(waves) * fe.waveform_scale  # [B, N]
            fb = kaldi_fbank(batch, fe.sample_rate, fe.num_mel_bins, fe.frame_length, fe.frame_shift,
                             window_type=fe.window_type)
            fb = fb.double()  # [B, T, F]
            total += fb.sum()
            total_sq += (fb * fb).sum()
            frames += fb.shape[0] * fb.shape[1]
        pending.clear()

    bar = tqdm(total=n_clips, unit="clip", desc=f"stats {storage.display_name(root)}/{split}", disable=not progress)
    reader = storage.ShardReader()
    for shard, positions in zip(info.shards, plan):
        try:
            for _, key, members in read_shard(storage.join(root, shard.path), positions, reader=reader,
                                              size=shard.bytes or None):
                bar.update(1)
                try:
                    wave = audio.load(members.get("flac", b""), fe.sample_rate)
                except audio.AudioDecodeError as e:
                    bad += 1
                    log.warning("stats: skipping %s in %s: %s", key, shard.path, e.reason)
                    continue
                clips += 1
                pending.append(wave)
                if len(pending) >= _BATCH:
                    flush()
        except (tarfile.TarError, OSError, EOFError) as e:
            bad += 1
            log.warning("stats: shard %s is damaged, skipping the rest of it: %s", shard.path, e)
    flush()
    bar.close()
    if frames == 0:
        raise ValueError(f"{root}: no decodable clip in split {split!r} to compute statistics from")
    count = frames * fe.num_mel_bins
    mean = (total / count).item()
    var = max(0.0, (total_sq / count).item() - mean * mean)
    return {
        "mean": round(mean, 6),
        "std": round(math.sqrt(var), 6),
        "split": split,
        "clips": clips,
        "frames": frames,
        "bad_clips": bad,
        "max_clips": max_clips,
        "seed": seed,
        "front_end": {k: getattr(fe, k) for k in STATS_KEYS},
        "method": "mean/std of every log-mel value (all frames and bins of each clip, no padding) of the kaldi fbank "
        "before normalisation; normalise with (x - mean) / (2 * std)",
    }


def write_stats(root: str | Path, stats: dict) -> None:
    """Store ``stats`` in the manifest (atomically)."""
    m = read_manifest(root)
    m.stats = stats
    write_manifest(root, m)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="audiossl stats", description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="dataset folder (manifest.json + shards), or its s3://, gs://, https:// or pipe: URL")
    p.add_argument("--split", default="train", help="split to measure (default train)")
    p.add_argument("--max-clips", type=int, default=None, help="a seeded random sample of this many clips")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    p.add_argument("--print-only", action="store_true",
                   help="print the statistics without writing them (e.g. for a read-only https:// or pipe: dataset)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--config", default=None,
                   help="measure with the front end of this training config (its model.front_end: mel bins, hop, "
                        "window length and type, sample rate, waveform scale), as the run will see the features")
    p.add_argument("--num-mel-bins", type=int, default=None, help="mel bins (default: the config's, else 128)")
    p.add_argument("--frame-shift", type=float, default=None, help="hop in ms (default: the config's, else 10)")
    p.add_argument("--frame-length", type=float, default=None, help="window in ms (default: the config's, else 25)")
    args = p.parse_args(argv)
    if args.max_clips is not None and args.max_clips < 1:
        p.error("--max-clips must be at least 1")
    try:
        fe = config_front_end(args.config) if args.config else FrontEndConfig()
        given = {k: v for k, v in (("num_mel_bins", args.num_mel_bins), ("frame_shift", args.frame_shift),
                                   ("frame_length", args.frame_length)) if v is not None}
        fe = FrontEndConfig.from_dict({**{k: getattr(fe, k) for k in STATS_KEYS}, **given})
        if storage.is_url(args.root):
            kind = storage.check_url(args.root, what="the dataset")
            if kind not in storage.WRITE_SCHEMES and not args.print_only:
                raise storage.UnsupportedURLError(
                    f"{args.root}: {kind}: datasets are read-only, so the statistics cannot be stored in its "
                    "manifest; add --print-only to compute and print them")
        stats = compute_stats(args.root, args.split, args.max_clips, args.seed, fe, progress=not args.quiet)
        if not args.print_only:
            write_stats(args.root, stats)
    except (FileNotFoundError, KeyError, ValueError, storage.StorageError) as e:
        print(f"audiossl stats: error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 1
    print(f"{args.root}: fbank mean {stats['mean']:.4f} std {stats['std']:.4f} over {stats['clips']} clips "
          f"({stats['frames']} frames) of {args.split}, {fe.num_mel_bins} mel bins at a {fe.frame_shift:g} ms hop"
          + ("" if args.print_only else "; written to manifest.json")
          + (f"; {stats['bad_clips']} bad clips skipped" if stats["bad_clips"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

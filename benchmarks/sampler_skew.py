"""How far is audiossl's weighted (AS-2M balanced) training stream from EAT's one global weighted draw?

EAT (``data/mae_image_dataset.py``) draws each epoch ``torch.multinomial(weights, 200000, replacement=False)`` over
the whole training set. audiossl's ``TrainStream`` deals the shards of an epoch to (rank, worker) reading slots and
each slot draws its fixed share of the epoch without replacement among *its own* shards (Efraimidis-Spirakis keys,
``TrainStream._weighted_pass``). This script runs the stream's real shard dealing and per-slot draw (no audio is read)
on a synthetic label set with AS-2M's shape and compares, per class, the expected number of clips per epoch that
carry it, against the global draw and against the global draw's own epoch-to-epoch noise.

    python benchmarks/sampler_skew.py [--epochs 8] [--slots 4] [--unbalanced 2000000]

The labels are a stand-in, not AudioSet's files: 527 classes with power-law frequencies (the most frequent ~1e6
clips, the rarest ~1e2, as in AS-2M), 1 + Poisson(1) labels per clip (AS-2M: ~2 on average), a 22,160-clip
balanced split with ~59 clips per class (and co-labels), 1000-clip shards; weights 1000 / (count + 0.01) summed over
a clip's labels (``data_prep/audioset.py``, AudioMAE's ``gen_weight.py``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from audiossl.data.pipeline import ShardRef, TrainStream, batches_per_rank, worker_batches

C = 527


def synthetic_audioset(n_unbalanced: int, n_balanced: int, rng: np.random.Generator, exponent: float = 1.47):
    """(labels as a CSR pair (offsets, label ids), split id per clip: 0 balanced, 1 unbalanced)."""
    p = (np.arange(C) + 1.0) ** -exponent
    p /= p.sum()
    n = 1 + rng.poisson(1.0, n_unbalanced)
    flat = rng.choice(C, size=int(n.sum()), p=p)
    clip = np.repeat(np.arange(n_unbalanced), n)
    pairs = np.unique(clip.astype(np.int64) * C + flat)  # one label per (clip, class)
    un_clip, un_lab = pairs // C, pairs % C
    # balanced split: every class ~n_balanced / C times as its main label, plus a co-label half of the time
    main = np.arange(n_balanced) % C
    extra = rng.choice(C, size=n_balanced, p=p)
    has_extra = rng.random(n_balanced) < 0.5
    b_clip = np.concatenate([np.arange(n_balanced), np.arange(n_balanced)[has_extra]])
    b_lab = np.concatenate([main, extra[has_extra]])
    pairs_b = np.unique(b_clip.astype(np.int64) * C + b_lab)
    clips = np.concatenate([pairs_b // C, un_clip + n_balanced])
    labels = np.concatenate([pairs_b % C, un_lab])
    split = np.concatenate([np.zeros(n_balanced, dtype=np.int8), np.ones(n_unbalanced, dtype=np.int8)])
    return clips, labels, split


def clip_weights(clips, labels, num_clips):
    counts = np.bincount(labels, minlength=C)
    w = np.zeros(num_clips)
    np.add.at(w, clips, 1000.0 / (counts[labels] + 0.01))
    return w, counts


def class_counts(chosen: np.ndarray, clips, labels, num_clips) -> np.ndarray:
    """Clips per class among ``chosen`` clip ids."""
    mult = np.bincount(chosen, minlength=num_clips)  # 0/1 without replacement
    return np.bincount(labels, weights=mult[clips], minlength=C)


def stream_epoch(stream: TrainStream, epoch: int, slots: int, base: dict) -> np.ndarray:
    """The clips audiossl's stream plans for one epoch: the real shard dealing and per-slot weighted pass."""
    rank_batches = len(stream)
    chosen = []
    for role in range(slots):
        shards = stream.slot_shards(epoch, role, slots)
        need = worker_batches(rank_batches, role, slots) * stream.batch_size
        rng = np.random.default_rng([stream.seed, epoch, 0, role, 2])  # as TrainStream.__iter__ seeds it
        for plan in stream._passes(shards, need, rng, extra=False):
            for shard, positions in plan:
                chosen.append(base[shard.path] + positions)
    return np.concatenate(chosen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--slots", type=int, default=4, help="ranks x workers (as2m.yaml: 1 GPU x 4 workers)")
    ap.add_argument("--unbalanced", type=int, default=2_000_000)
    ap.add_argument("--balanced", type=int, default=22_160)
    ap.add_argument("--epoch-size", type=int, default=200_000)
    ap.add_argument("--batch-size", type=int, default=96)
    ap.add_argument("--shard-size", type=int, default=1000)
    args = ap.parse_args()
    t0 = time.time()
    rng = np.random.default_rng(0)
    clips, labels, split = synthetic_audioset(args.unbalanced, args.balanced, rng)
    N = len(split)
    w, counts = clip_weights(clips, labels, N)
    # shards per split, in manifest order (balanced first), never mixing the two splits
    shards, base, s0 = [], {}, 0
    for end in list(range(args.shard_size, args.balanced, args.shard_size)) + [args.balanced] + \
            list(range(args.balanced + args.shard_size, N, args.shard_size)) + [N]:
        path = f"shard{len(shards):06d}"
        shards.append(ShardRef(path, end - s0, None, w[s0:end]))
        base[path] = s0
        s0 = end
    stream = TrainStream(shards, num_classes=C, multi_label=True, sample_rate=16000, clip_samples=160000,
                         batch_size=args.batch_size, epoch_size=args.epoch_size, weighted=True, world_size=1)
    slots_per_rank = args.slots  # one rank, args.slots workers
    planned = batches_per_rank(args.epoch_size, args.batch_size, 1) * args.batch_size
    print(f"{N} clips ({args.balanced} balanced) in {len(shards)} shards; class counts {counts.max()} .. "
          f"{counts.min()}; epoch: {planned} of {args.epoch_size} clips, {args.slots} reading slots "
          f"[{time.time() - t0:.1f} s]")
    wt = torch.from_numpy(w)
    ours, glob, glob2, bal_ours, bal_glob, bal_glob2 = [], [], [], [], [], []
    for e in range(args.epochs):
        o = stream_epoch(stream, e, slots_per_rank, base)
        assert len(o) == planned and len(np.unique(o)) == len(o)
        g = torch.multinomial(wt, planned, replacement=False, generator=torch.Generator().manual_seed(e)).numpy()
        g2 = torch.multinomial(wt, planned, replacement=False,
                               generator=torch.Generator().manual_seed(10_000 + e)).numpy()
        ours.append(class_counts(o, clips, labels, N))
        glob.append(class_counts(g, clips, labels, N))
        glob2.append(class_counts(g2, clips, labels, N))
        bal_ours.append(float((split[o] == 0).mean()))
        bal_glob.append(float((split[g] == 0).mean()))
        bal_glob2.append(float((split[g2] == 0).mean()))
        print(f"  epoch {e}: done [{time.time() - t0:.1f} s]")
    ours, glob, glob2 = (np.mean(x, axis=0) for x in (ours, glob, glob2))
    rel = (ours - glob) / glob
    noise = (glob2 - glob) / glob
    freq = np.argsort(-counts)
    groups = {"10 most frequent": freq[:10], "middle": freq[258:268], "10 rarest": freq[-10:]}
    print(f"\nper-class clips per epoch, mean over {args.epochs} epochs: audiossl per-slot vs EAT global")
    print(f"  |relative difference|: median {np.median(np.abs(rel)):.4f}, 95th pct {np.quantile(np.abs(rel), 0.95):.4f}, "
          f"max {np.abs(rel).max():.4f}")
    print(f"  the global draw against itself (other seeds): median {np.median(np.abs(noise)):.4f}, 95th pct "
          f"{np.quantile(np.abs(noise), 0.95):.4f}, max {np.abs(noise).max():.4f}")
    for name, idx in groups.items():
        print(f"  {name:17s} ours {ours[idx].mean():9.1f}  global {glob[idx].mean():9.1f}  "
              f"mean rel diff {rel[idx].mean():+.4f}  (noise {noise[idx].mean():+.4f})")
    sd = np.std(bal_glob + bal_glob2) / np.sqrt(args.epochs)
    print(f"  share of balanced-train clips: ours {np.mean(bal_ours):.5f}, global {np.mean(bal_glob):.5f}, "
          f"global (other seeds) {np.mean(bal_glob2):.5f}; standard error of an {args.epochs}-epoch mean {sd:.5f}")
    tv = 0.5 * np.abs(ours / ours.sum() - glob / glob.sum()).sum()
    tv_noise = 0.5 * np.abs(glob2 / glob2.sum() - glob / glob.sum()).sum()
    print(f"  total variation between the label distributions: {tv:.5f} (global vs global: {tv_noise:.5f})")
    print(f"[{time.time() - t0:.1f} s]")


if __name__ == "__main__":
    main()

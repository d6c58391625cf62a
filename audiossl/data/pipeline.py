"""From tar shards to batches: the training stream and the evaluation stream.

Both streams are ``IterableDataset`` s that run inside DataLoader workers and yield whole batches (the DataLoader uses
``batch_size=None``)::

    {"audio": float32 [B, N] waveforms at the dataset rate, N = clip_samples,
     "num_samples": int64 [B], how many samples of each row are audio (the rest is zero padding),
     "target": float32 multi-hot [B, C] (multi-label) or int64 class indices [B],
     "key": list[str] of the B sample keys}

A *slot* is one (rank, worker) reader; there are ``S = world_size * num_workers`` of them (a rank without workers
is one slot).

Training (:class:`TrainStream`), per epoch ``e``:

* the shards are permuted with ``(seed, e)`` and dealt round-robin to the slots, so slots read disjoint shards
  (with fewer shards than slots every slot reads every shard and keeps every S-th sample, with a warning);
* each rank yields ``epoch_size // (world_size * batch_size)`` batches, the same on every rank; they are dealt to
  its workers as evenly as possible, earlier workers taking the extra one, so that the DataLoader's round-robin
  over workers gives batch ``j`` of the rank from worker ``j % W``;
* a slot streams its shards (again if it needs more samples than they hold — so an epoch shows every sample once
  only when each slot's share matches its demand, as with many shards per slot; otherwise a few samples of the
  epoch repeat and as many wait for a later epoch, whose new shard order evens this out; with ``weighted`` it draws
  its samples per pass without replacement by the json ``weight`` s, Efraimidis-Spirakis keys);
* it keeps ``open_shards`` shards open at once and takes each next sample from one of them, a seeded random merge
  (:func:`_interleave`), so consecutive samples come from different shards even when a shard is sorted by label
  (``prep --keep-order``, datasets written before the writer shuffled);
* it drops invalid samples (no json, bad label index, no audio), shuffles raw (undecoded) samples in a buffer seeded
  by ``(seed, e, rank, worker)``, decodes FLAC, crops a window whose offset is a hash of ``(seed, e, pass, key)``
  (or zero-pads at the end) and batches. A sample that fails to decode is replaced by the next one, so batch counts
  never change.
* resuming after ``k`` batches of epoch ``e`` (:meth:`TrainStream.set_epoch`): worker ``w`` plays the role of worker
  ``(w + k) % W`` and drops the ``(w + k) // W`` batches that role had yielded, *after the shuffle buffer and before
  decoding*; the DataLoader then delivers exactly the batches ``k, k+1, ...`` of the uninterrupted epoch.
  (Exact unless a sample in the dropped part is undecodable despite valid json; it stays correct in count.)

Evaluation (:class:`EvalStream`): shards in manifest order dealt round-robin to slots (or every S-th sample with
fewer shards), each sample read once, the first ``clip_samples`` kept (zero-padded), bad samples skipped and counted;
the union over all ranks and workers is every sample exactly once.

Shards may be local files or URLs (:mod:`audiossl.data.storage`): a stream reads them through one
:class:`~audiossl.data.storage.ShardReader`, which fetches remote shards ahead (the open ones and the next), retries
transient faults, and may keep them in a local cache. A shard that still cannot be read is skipped, counted as an
``unreadable shard`` and not tried again by that stream; training replaces its samples like any bad sample, so the
batch counts stay the same on every rank.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import random
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.filters import shuffle as wds_shuffle
from webdataset.tariterators import base_plus_ext

from audiossl.frontend import audio
from audiossl.data import storage
from audiossl.data.manifest import Manifest
from audiossl.errors import DatasetError

log = logging.getLogger("audiossl.data")
_MAX_WARNINGS = 20  # per worker and pass over the data; then only the end-of-epoch summary


# --- shards ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ShardRef:
    """A shard as the streams see it.

    ``path``: a local path or a URL (:mod:`audiossl.data.storage`). ``positions``: the sample positions (0-based,
    sorted) this shard contributes, e.g. after a fold filter (``None``: all ``samples``). ``weights``: a sampling
    weight per sample position ``[samples]`` (weighted mode). ``nbytes``: the file size the manifest records.
    """

    path: str
    samples: int
    positions: np.ndarray | None = None
    weights: np.ndarray | None = None
    nbytes: int | None = None

    def candidates(self) -> np.ndarray:
        return np.arange(self.samples) if self.positions is None else self.positions

    def with_positions(self, positions: np.ndarray) -> "ShardRef":
        return ShardRef(self.path, self.samples, np.asarray(positions, dtype=np.int64), self.weights, self.nbytes)


def shard_refs(
    root: str | Path,
    manifest: Manifest,
    splits: Sequence[str],
    fold_filter: Callable[[int], bool] | None = None,
    weighted: bool = False,
) -> list[ShardRef]:
    """The shards of ``splits`` (in manifest order) with positions filtered by fold and weights loaded if asked;
    ``root`` is a local folder or a URL."""
    refs: list[ShardRef] = []
    for name in splits:
        info = manifest.split(name)
        if fold_filter is not None and not info.has_folds:
            raise DatasetError(f"split {name!r} has no folds in its manifest, so eval_fold cannot be used with it")
        weights = _load_weights(root, name, info) if weighted else [None] * len(info.shards)
        for shard, w in zip(info.shards, weights):
            positions = None
            if fold_filter is not None:
                positions = np.array([i for i, f in enumerate(shard.folds) if fold_filter(f)], dtype=np.int64)
            refs.append(ShardRef(storage.join(root, shard.path), shard.samples, positions, w, shard.bytes or None))
    return refs


def _load_weights(root: Path, split: str, info) -> list[np.ndarray]:
    """Per-shard weight arrays from ``{split}_weights.csv`` (``key,weight`` rows in shard order)."""
    if not info.weights:
        raise DatasetError(
            f"weighted=True but split {split!r} has no sampling weights (only `audiossl prep audioset` writes them)"
        )
    path = storage.join(root, info.weights)
    values = np.loadtxt(io.BytesIO(storage.read_bytes(path)), delimiter=",", skiprows=1, usecols=1,
                        dtype=np.float64, ndmin=1)
    if len(values) != info.samples:
        raise DatasetError(f"{path} has {len(values)} weights for {info.samples} samples; re-run `audiossl prep`")
    bounds = np.cumsum([0] + [s.samples for s in info.shards])
    return [values[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def read_shard(path: str, positions: np.ndarray | None = None, *, reader: storage.ShardReader | None = None,
               size: int | None = None) -> Iterator[tuple[int, str, dict]]:
    """Yield ``(position, key, {suffix: bytes})`` for the samples of a tar shard (a local path or a URL), in order.

    With ``positions`` (sorted), only those samples are yielded and the others' members are never read into memory.
    A damaged tar raises ``tarfile.ReadError``/``OSError`` after the samples before the damage; a remote shard that
    cannot be fetched (after ``reader``'s retries) raises :class:`~audiossl.data.storage.StorageError` (an
    ``OSError``). ``size``: the shard's size in bytes if known (saves a request).
    """
    wanted = None if positions is None else set(int(p) for p in positions)
    last = -1 if wanted is None else (max(wanted) if wanted else -1)
    if wanted is not None and not wanted:
        return
    pos, key, members, take = -1, None, {}, False
    reader = reader or storage.ShardReader()
    with reader.open(path, size) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for info in tar:
            tar.members = []  # stream mode otherwise keeps every header
            if not info.isreg():
                continue
            k, suffix = base_plus_ext(info.name)
            if k is None:
                continue
            if k != key:
                if take:
                    yield pos, key, members
                pos, key, members = pos + 1, k, {}
                if wanted is not None and pos > last:
                    return
                take = wanted is None or pos in wanted
            if take:
                fh = tar.extractfile(info)
                members[suffix.lower()] = fh.read() if fh is not None else b""
    if take:
        yield pos, key, members


# --- dealing shards and counting batches (pure functions) --------------------------------------------------------
def deal(shards: Sequence[ShardRef], slot: int, num_slots: int) -> list[ShardRef]:
    """Slot ``slot``'s share of ``shards``: every ``num_slots``-th shard, or with fewer shards than slots, every
    shard restricted to every ``num_slots``-th candidate sample. Shares of different slots are disjoint."""
    if len(shards) >= num_slots:
        return list(shards[slot::num_slots])
    out, offset = [], 0
    for s in shards:
        cand = s.candidates()
        idx = np.arange(offset, offset + len(cand))
        out.append(s.with_positions(cand[idx % num_slots == slot]))
        offset += len(cand)
    return out


def epoch_permutation(num_shards: int, seed: int, epoch: int) -> np.ndarray:
    """The shard order of a training epoch: the same on every rank and worker."""
    return np.random.default_rng([seed, epoch, 0x5AD]).permutation(num_shards)


def batches_per_rank(epoch_size: int, batch_size: int, world_size: int) -> int:
    """Training batches each rank yields per epoch (at least 1): ``epoch_size // (world_size * batch_size)``."""
    return max(1, epoch_size // (world_size * batch_size))


def worker_batches(rank_batches: int, worker: int, num_workers: int) -> int:
    """Batches worker ``worker`` of ``num_workers`` yields: an even share, the first workers taking the remainder,
    so the DataLoader's round-robin gives batch ``j`` of the rank from worker ``j % num_workers``."""
    return rank_batches // num_workers + (1 if worker < rank_batches % num_workers else 0)


def _seed_int(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0])


def _hash_int(*parts) -> int:
    text = "/".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


# --- samples -----------------------------------------------------------------------------------------------------
class _Samples:
    """Validation, decoding, cropping and collation of samples, with the bad-sample counter of one worker."""

    def __init__(self, num_classes: int, multi_label: bool, sample_rate: int, clip_samples: int | None, where: str):
        self.num_classes, self.multi_label = num_classes, multi_label
        self.sample_rate, self.clip_samples = sample_rate, clip_samples
        self.where = where
        self.bad: Counter = Counter()
        self.io = storage.IOCounters()  # retries, cache hits, bytes of remote shards
        self.dead: set[str] = set()  # shards given up on in this pass over the data (not retried again)
        self._warned = 0

    def reject(self, key: str, shard: str, reason: str) -> None:
        self.bad[reason.split(":")[0]] += 1
        if self._warned < _MAX_WARNINGS:
            self._warned += 1
            log.warning("%s: skipping bad sample %r in %s: %s", self.where, key, shard, reason)

    def summary(self) -> None:
        if self.bad:
            log.warning("%s: skipped %d bad samples so far (%s)", self.where, sum(self.bad.values()), dict(self.bad))
        if self.io["retries"] or self.dead:
            log.warning("%s: %d remote reads retried, %d shards unreadable after retries (%s)", self.where,
                        self.io["retries"], len(self.dead), ", ".join(storage.redact(p) for p in sorted(self.dead)[:5]))

    def check(self, shard: str, key: str, members: dict):
        """Raw members -> ``(key, flac bytes, label indices)`` or ``None`` (counted) for an invalid sample."""
        if "json" not in members:
            return self.reject(key, shard, "missing json: the sample has no .json member")
        if "flac" not in members or not members["flac"]:
            return self.reject(key, shard, "missing audio: the sample has no (or an empty) .flac member")
        try:
            meta = json.loads(members["json"])
            idx = [int(i) for i in meta.get("label_idx", [])]
        except (ValueError, TypeError, AttributeError) as e:
            return self.reject(key, shard, f"bad json: {e}")
        if any(i < 0 or i >= self.num_classes for i in idx):
            return self.reject(key, shard, f"unknown label index: {idx} outside 0..{self.num_classes - 1}")
        if not self.multi_label and len(idx) != 1:
            return self.reject(key, shard, f"label count: single-label dataset but {len(idx)} labels")
        return key, members["flac"], idx

    def decode(self, shard: str, key: str, flac: bytes, offset_fn: Callable[[int], int] | None):
        """FLAC -> (float32 ``[clip_samples]`` numpy array, number of real samples in it): the window at
        ``offset_fn(choices)`` (else the start), or the whole clip zero-padded at the end; ``None`` (counted) when it
        does not decode. The real length travels with the batch so the front end pads in the log-mel domain."""
        try:
            wave = audio.load(flac, self.sample_rate).numpy()
        except audio.AudioDecodeError as e:
            return self.reject(key, shard, f"undecodable audio: {e.reason}")
        n = self.clip_samples
        if n is None or wave.shape[0] == n:
            return wave, wave.shape[0]
        if wave.shape[0] > n:
            start = offset_fn(wave.shape[0] - n + 1) if offset_fn is not None else 0
            return wave[start : start + n], n
        return np.pad(wave, (0, n - wave.shape[0])), wave.shape[0]

    def collate(self, items: list[tuple[str, tuple[np.ndarray, int], list[int]]]) -> dict:
        # numpy, not torch.stack: torch's intra-op threads make a plain copy crawl when the CPU is oversubscribed
        keys = [k for k, _, _ in items]
        wave = torch.empty((len(items), len(items[0][1][0])), dtype=torch.float32)  # [B, N]
        if get_worker_info() is not None:
            wave.share_memory_()  # filled in place, so passing it to the main process copies nothing
        np.stack([w for _, (w, _), _ in items], out=wave.numpy())
        num_samples = torch.tensor([n for _, (_, n), _ in items], dtype=torch.int64)  # [B]
        if self.multi_label:
            target = np.zeros((len(items), self.num_classes), dtype=np.float32)  # [B, C]
            for row, (_, _, idx) in enumerate(items):
                target[row, idx] = 1.0
            target = torch.from_numpy(target)
        else:
            target = torch.tensor([idx[0] for _, _, idx in items], dtype=torch.int64)  # [B]
        return {"audio": wave, "num_samples": num_samples, "target": target, "key": keys}


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _read_one(shard: ShardRef, positions: np.ndarray | None, samples: _Samples,
              reader: storage.ShardReader | None = None) -> Iterator[tuple[str, tuple]]:
    """Yields ``(shard path, checked sample)`` for the valid samples of one shard. A damaged shard, or a remote one
    that still fails after the retries, is reported and counted, and its remaining samples skipped; a shard given up
    on is not tried again by the same stream (``samples.dead``)."""
    if shard.path in samples.dead:
        return
    try:
        for _, key, members in read_shard(shard.path, positions, reader=reader, size=shard.nbytes):
            checked = samples.check(shard.path, key, members)
            if checked is not None:
                yield shard.path, checked
    except storage.StorageError as e:
        samples.bad["unreadable shard"] += 1
        samples.dead.add(shard.path)
        log.warning("%s: shard %s could not be read, skipping it: %s", samples.where, storage.redact(shard.path), e)
    except (tarfile.TarError, OSError, EOFError) as e:
        samples.bad["damaged shard"] += 1
        log.warning("%s: shard %s is damaged or unreadable, skipping its remaining samples: %s",
                    samples.where, storage.redact(shard.path), e)


def _read_all(plan: Sequence[tuple[ShardRef, np.ndarray | None]], samples: _Samples,
              reader: storage.ShardReader | None = None) -> Iterator[tuple[str, tuple]]:
    """Read a list of (shard, positions) one shard after the other, fetching the next one ahead (URLs)."""
    for i, (shard, positions) in enumerate(plan):
        if reader is not None and i + 1 < len(plan) and plan[i + 1][0].path not in samples.dead:
            reader.prefetch(plan[i + 1][0].path, plan[i + 1][0].nbytes)
        yield from _read_one(shard, positions, samples, reader)


def _interleave(plan: Sequence[tuple[ShardRef, np.ndarray | None]], samples: _Samples, open_shards: int,
                rng: np.random.Generator, reader: storage.ShardReader | None = None) -> Iterator[tuple[str, tuple]]:
    """Read a list of (shard, positions) ``open_shards`` shards at a time, mixing their samples.

    Each next sample comes from one of the open shards, drawn with probability proportional to the samples it has
    left (so the output is a uniformly random merge of the open shards' sequences); a finished shard is replaced by
    the next one of the plan, which ``reader`` starts fetching as soon as the one before it opens (URLs).
    Deterministic given ``rng``'s state. With ``open_shards`` 1 this is :func:`_read_all`.
    """
    plan = list(plan)
    nxt = 0
    readers: list[Iterator] = []
    left: list[int] = []  # planned samples not yet read, per open shard (a weight only: bad samples are skipped)

    def open_next() -> bool:
        nonlocal nxt
        while nxt < len(plan):
            shard, positions = plan[nxt]
            nxt += 1
            n = shard.samples if positions is None else len(positions)
            if n > 0 and shard.path not in samples.dead:
                readers.append(_read_one(shard, positions, samples, reader))
                left.append(n)
                if reader is not None:  # start its download now, and the one of the shard after it
                    reader.prefetch(shard.path, shard.nbytes)
                    if nxt < len(plan) and plan[nxt][0].path not in samples.dead:
                        reader.prefetch(plan[nxt][0].path, plan[nxt][0].nbytes)
                return True
        return False

    while len(readers) < max(1, open_shards) and open_next():
        pass
    while readers:
        if len(readers) == 1:
            i = 0
        else:
            weights = np.maximum(np.asarray(left, dtype=np.float64), 1.0)
            i = min(int(np.searchsorted(np.cumsum(weights), rng.random() * weights.sum(), side="right")),
                    len(readers) - 1)
        item = next(readers[i], None)
        if item is None:  # this shard is done: open the next one in its place
            readers.pop(i)
            left.pop(i)
            open_next()
            continue
        left[i] -= 1
        yield item


# --- training ----------------------------------------------------------------------------------------------------
class TrainStream(IterableDataset):
    """The training stream of one rank (see the module docstring). ``len()`` is the rank's batches per epoch."""

    def __init__(
        self,
        shards: Sequence[ShardRef],
        *,
        num_classes: int,
        multi_label: bool,
        sample_rate: int,
        clip_samples: int,
        batch_size: int,
        epoch_size: int,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        weighted: bool = False,
        rank: int = 0,
        world_size: int = 1,
        open_shards: int = 8,
        io_options: storage.IOOptions | None = None,
    ):
        super().__init__()
        if not shards:
            raise ValueError("no training shards")
        if open_shards < 1:
            raise ValueError(f"open_shards must be >= 1, got {open_shards}")
        if batch_size < 1 or epoch_size < 1:
            raise ValueError(f"batch_size and epoch_size must be >= 1 (got {batch_size}, {epoch_size})")
        if weighted and any(s.weights is None for s in shards):
            raise ValueError("weighted sampling needs weights for every shard")
        self.shards = list(shards)
        self.num_classes, self.multi_label = num_classes, multi_label
        self.sample_rate, self.clip_samples = sample_rate, clip_samples
        self.batch_size, self.epoch_size = batch_size, epoch_size
        self.seed, self.shuffle_buffer, self.weighted = seed, shuffle_buffer, weighted
        self.rank, self.world_size = rank, world_size
        self.open_shards = open_shards
        self.io_options = io_options or storage.IOOptions()
        self.epoch = 0
        self.skip_batches = 0
        self.samples: _Samples | None = None  # the bad-sample counter of the process that iterates

    def _make_samples(self, where: str) -> "_Samples":
        return _Samples(self.num_classes, self.multi_label, self.sample_rate, self.clip_samples, where)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Make the next iteration epoch ``epoch``, starting after its first ``skip_batches`` batches of this rank."""
        self.epoch, self.skip_batches = int(epoch), max(0, int(skip_batches))

    def __len__(self) -> int:
        return batches_per_rank(self.epoch_size, self.batch_size, self.world_size)

    def slot_shards(self, epoch: int, slot: int, num_slots: int) -> list[ShardRef]:
        order = epoch_permutation(len(self.shards), self.seed, epoch)
        return deal([self.shards[i] for i in order], slot, num_slots)

    def _passes(self, shards: list[ShardRef], need: int, rng: np.random.Generator, extra: bool):
        """Passes over the slot's shards as ``[(shard, positions)]`` lists. The planned passes (``extra=False``) hold
        ``need`` samples in total, every candidate at most once per pass; the extra passes (``extra=True``, endless,
        read only to replace bad samples) hold everything again."""
        cands = [s.candidates() for s in shards]
        total = sum(len(c) for c in cands)
        if total == 0:
            raise RuntimeError(f"rank {self.rank}: a reading slot has no samples (shards: {[s.path for s in shards]})")
        remaining = need
        while extra or remaining > 0:
            k = total if extra else min(total, remaining)
            remaining -= k
            if self.weighted:
                yield self._weighted_pass(shards, cands, k, rng)
            elif k == total:
                yield list(zip(shards, cands))
            else:  # the first k candidates in this epoch's shard order
                plan, left = [], k
                for s, c in zip(shards, cands):
                    if left <= 0:
                        break
                    plan.append((s, c[:left]))
                    left -= len(c[:left])
                yield plan

    @staticmethod
    def _weighted_pass(shards, cands, k, rng) -> list:
        w = np.concatenate([s.weights[c] for s, c in zip(shards, cands)]).astype(np.float64)
        ok = w > 0
        k = min(k, int(ok.sum()))
        keys = np.full(len(w), -np.inf)
        keys[ok] = np.log(rng.random(int(ok.sum()))) / w[ok]  # Efraimidis-Spirakis: top-k of u**(1/w)
        chosen = np.sort(np.argpartition(-keys, k - 1)[:k]) if k > 0 else np.array([], dtype=np.int64)
        bounds = np.cumsum([0] + [len(c) for c in cands])
        plan = []
        for s, c, a, b in zip(shards, cands, bounds[:-1], bounds[1:]):
            sel = chosen[(chosen >= a) & (chosen < b)] - a
            if len(sel):
                plan.append((s, c[sel]))
        return plan

    def __iter__(self) -> Iterator[dict]:
        w, W = _worker()
        epoch, skip = self.epoch, self.skip_batches
        role = (w + skip) % W  # the worker whose batches this one delivers (rotated when resuming)
        rank_batches = len(self)
        total_batches = worker_batches(rank_batches, role, W)
        skip_mine = min((w + skip) // W, total_batches)
        n_batches = total_batches - skip_mine
        where = f"train rank {self.rank} worker {w}"
        samples = self.samples = self._make_samples(where)
        if n_batches <= 0:
            return
        shards = self.slot_shards(epoch, self.rank * W + role, self.world_size * W)
        need = total_batches * self.batch_size
        rng = np.random.default_rng([self.seed, epoch, self.rank, role, 2])

        reader = storage.ShardReader(self.io_options, samples.io)

        def raw(extra: bool):
            for pass_no, plan in enumerate(self._passes(shards, need, rng, extra)):
                got = 0
                mix = np.random.default_rng([self.seed, epoch, self.rank, role, 3, pass_no, int(extra)])
                for shard, checked in _interleave(plan, samples, self.open_shards, mix, reader):
                    got += 1
                    yield pass_no + (1_000_000 if extra else 0), shard, checked
                if got == 0 and extra:
                    raise RuntimeError(f"{where}: a whole pass over its shards gave no valid sample; see the warnings")

        # The planned samples are shuffled on their own; the extra passes (replacements for bad samples) are only
        # opened, and shuffled, once the planned ones are used up.
        shuffle_rng = random.Random(_seed_int(self.seed, epoch, self.rank, role, 1))
        extra_buffer = max(1, min(self.shuffle_buffer, sum(len(s.candidates()) for s in shards)))  # <= one pass ahead
        stream = itertools.chain(
            wds_shuffle(bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=shuffle_rng)(raw(False)),
            wds_shuffle(bufsize=extra_buffer, initial=extra_buffer, rng=shuffle_rng)(raw(True)),
        )
        stream = itertools.islice(stream, skip_mine * self.batch_size, None)  # resume: drop before decoding
        batch: list = []
        produced = failures = 0
        try:
            for pass_no, shard, (key, flac, idx) in stream:
                offset = lambda span, k=key, p=pass_no: _hash_int(self.seed, epoch, p, k) % span  # noqa: E731
                decoded = samples.decode(shard, key, flac, offset)  # (wave, real samples)
                if decoded is None:
                    failures += 1
                    if failures > max(1000, 2 * need):
                        raise RuntimeError(f"{where}: {failures} samples in a row failed to decode; see the warnings")
                    continue
                failures = 0
                batch.append((key, decoded, idx))
                if len(batch) == self.batch_size:
                    yield samples.collate(batch)
                    batch = []
                    produced += 1
                    if produced == n_batches:
                        break
        finally:
            reader.close()
        samples.summary()


# --- evaluation --------------------------------------------------------------------------------------------------
class EvalStream(IterableDataset):
    """Every sample of ``shards`` exactly once over all ranks and workers, in a deterministic order."""

    def __init__(
        self,
        shards: Sequence[ShardRef],
        *,
        num_classes: int,
        multi_label: bool,
        sample_rate: int,
        clip_samples: int | None,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        io_options: storage.IOOptions | None = None,
    ):
        super().__init__()
        if clip_samples is None and batch_size != 1:
            raise ValueError("without clip_samples clips differ in length: use batch_size=1")
        self.shards = list(shards)
        self.num_classes, self.multi_label = num_classes, multi_label
        self.sample_rate, self.clip_samples = sample_rate, clip_samples
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.io_options = io_options or storage.IOOptions()
        self.samples: _Samples | None = None

    def _make_samples(self, where: str) -> "_Samples":
        return _Samples(self.num_classes, self.multi_label, self.sample_rate, self.clip_samples, where)

    @property
    def num_samples(self) -> int:
        return sum(len(s.candidates()) for s in self.shards)

    def __iter__(self) -> Iterator[dict]:
        w, W = _worker()
        where = f"eval rank {self.rank} worker {w}"
        samples = self.samples = self._make_samples(where)
        mine = deal(self.shards, self.rank * W + w, self.world_size * W)
        batch: list = []
        reader = storage.ShardReader(self.io_options, samples.io)
        try:
            for shard, (key, flac, idx) in _read_all([(s, s.positions) for s in mine], samples, reader):
                decoded = samples.decode(shard, key, flac, None)  # (wave, real samples)
                if decoded is None:
                    continue
                batch.append((key, decoded, idx))
                if len(batch) == self.batch_size:
                    yield samples.collate(batch)
                    batch = []
        finally:
            reader.close()
        if batch:
            yield samples.collate(batch)
        samples.summary()

"""The shard writer: the one piece of code under every converter (``data_prep/*``).

A converter turns its source layout into a sequence of :class:`Clip` (a tar-safe key, a split, the json metadata and
either an audio file path or a picklable ``render()`` function; a list, or a :class:`LazyClips` that builds each clip
on demand) plus the inputs it already knows are bad, and calls :func:`write_dataset`, which

0. checks every clip in input order (split name, key safety, duplicate keys: the first input of a split with a key
   wins) and then **shuffles** the order of the remaining clips with ``seed`` (``keep_order`` keeps the input
   order), so no shard is sorted by label, speaker or source, whatever order the source lists its files in;
1. once the first clip is encoded, clears what a previous run left in ``DIR`` (the manifest first, so nothing stale is
   ever listed, then the shards, ``*.tar.tmp`` leftovers, ``rejected.tsv`` and weight files of the splits involved) —
   a re-run **overwrites**; a run that writes no clip at all raises ``DatasetError`` and leaves ``DIR`` as it was;
2. decodes, resamples (to ``sample_rate`` unless ``keep_rate``) and encodes each clip to 16-bit FLAC in a process
   pool of ``workers`` (0 = in this process), consuming the results **in writing order**, so the output is
   byte-identical for a given input, seed and ``keep_order`` whatever the number of workers;
3. appends ``{key}.flac`` + ``{key}.json`` to ``DIR/{split}/{split}-NNNNNN.tar.tmp``; a shard is closed after
   ``shard_size`` samples or before it would pass ``max_shard_bytes``, fsynced and renamed to ``.tar``;
4. skips bad inputs (undecodable, empty, truncated, not audio, duplicate key) and lists them with the reason in
   ``DIR/rejected.tsv`` (``source<TAB>reason``, in input order), then writes per-split weight CSVs (rows in shard
   order) and finally, atomically, the manifest (with per-split duration percentiles), and prints the counts
   (written / rejected / missing).

A crash leaves at most a ``*.tar.tmp`` and no manifest: readers find nothing half-written, and the next run starts
clean. Tar members carry fixed metadata (mtime 0), so shards are reproducible byte for byte.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import webdataset as wds

from audiossl.frontend import audio
from audiossl.data import storage
from audiossl.data.labels import LabelSpace
from audiossl.data.manifest import (
    MANIFEST_NAME,
    Manifest,
    ShardInfo,
    SplitInfo,
    atomic_write,
    fsync_dir,
    manifest_path,
    read_manifest,
    write_manifest,
)
from audiossl.data.storage import output_dir
from audiossl.errors import DatasetError

REJECTED_NAME = "rejected.tsv"
MISSING = "missing"  # the reason recorded for inputs that do not exist
_UNSAFE_KEY = re.compile(r"[./\\\s\x00-\x1f\x7f]")
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_TAR_BLOCK = 512
PERCENTILES = (50, 90, 95, 99)  # of clip durations, per split, in the manifest
_ORDER_STREAM = 0x0DE7  # a fixed second seed word: the order's random stream differs from other uses of ``seed``


def default_workers() -> int:
    """The CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def safe_key(text: str) -> str:
    """A tar-safe sample key: ``.``, ``/``, ``\\``, whitespace and control characters become ``_``.

    WebDataset splits a member name at the first dot of its basename, so a key must hold no dot; the original id is
    kept in the json. The mapping is deterministic; two ids that map to the same key are caught as duplicates.
    """
    key = _UNSAFE_KEY.sub("_", text)
    if not key:
        raise ValueError(f"cannot make a sample key from {text!r}")
    return key


@dataclass
class Clip:
    """One input clip.

    ``meta`` is stored as the sample's json (``id``, ``labels``, ``label_idx``, ``source`` and, where they exist,
    ``fold``, ``start``, ``weight``); the writer adds ``duration`` and ``sample_rate``. Audio comes from ``path``
    (any format :func:`audiossl.frontend.audio.load` reads) or from ``render()`` -> ``(wave [N] float in [-1, 1], rate)``,
    which must be picklable (a module-level function or a ``functools.partial`` of one).
    """

    key: str
    split: str
    meta: dict
    path: str | None = None
    render: Callable[[], tuple[np.ndarray, int]] | None = None

    @property
    def source(self) -> str:
        return self.path if self.path is not None else str(self.meta.get("id", self.key))


class LazyClips(Sequence):
    """``n`` clips made on demand by ``make(i)``: a converter with millions of inputs (AudioSet) hands the writer a
    sequence it can index in shuffled order without holding every :class:`Clip` (and its json dict) in memory."""

    def __init__(self, n: int, make: Callable[[int], Clip]):
        self._n, self._make = int(n), make

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if not -self._n <= i < self._n:
            raise IndexError(i)
        return self._make(i % self._n)


@dataclass
class WriterOptions:
    """Writer settings shared by every converter (``--shard-size``, ``--max-shard-bytes``, ``--workers``, ``--seed``,
    ``--keep-order``, ...). ``seed`` seeds the shuffled sample order; ``keep_order`` writes in input order."""

    shard_size: int = 1000
    max_shard_bytes: int = 1 << 30
    workers: int = field(default_factory=default_workers)
    sample_rate: int = 16000
    keep_rate: bool = False
    progress: bool = True
    seed: int = 0
    keep_order: bool = False

    def __post_init__(self):
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.max_shard_bytes < tarfile.RECORDSIZE:
            raise ValueError(f"max_shard_bytes must be at least {tarfile.RECORDSIZE}, got {self.max_shard_bytes}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")


@dataclass
class WriteReport:
    """What :func:`write_dataset` did."""

    manifest: Manifest
    written: dict[str, int]
    rejected: list[tuple[str, str]]  # (source, reason); missing inputs have reason "missing"
    seconds: float

    @property
    def num_written(self) -> int:
        return sum(self.written.values())

    @property
    def num_missing(self) -> int:
        return sum(1 for _, r in self.rejected if r == MISSING)

    @property
    def num_rejected(self) -> int:
        return len(self.rejected) - self.num_missing


# --- command-line options shared by the converters ---------------------------------------------------------------
def parse_size(text: str) -> int:
    """``"512M"``, ``"1G"``, ``"1.5e9"`` -> bytes."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMgGtT]?)i?[bB]?\s*", str(text))
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 512M or 2G)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def add_writer_args(parser: argparse.ArgumentParser, seed: bool = True) -> None:
    """Add ``--out``, ``--workers``, ``--shard-size``, ``--max-shard-bytes``, ``--sample-rate``, ``--keep-rate``,
    ``--seed`` (unless the converter has its own, ``seed=False``, which then also seeds the order), ``--keep-order``,
    ``--quiet`` to a converter's parser."""
    g = parser.add_argument_group("output")
    g.add_argument("--out", required=True, help="dataset folder to (over)write: manifest.json + {split}/*.tar; or "
                   "s3://BUCKET/PREFIX or gs://BUCKET/PREFIX (staged locally, each shard uploaded when complete)")
    g.add_argument("--workers", type=int, default=default_workers(), help="decode/encode processes (0: in-process)")
    g.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    g.add_argument("--max-shard-bytes", type=parse_size, default=1 << 30, help="size cap per shard (default 1G)")
    g.add_argument("--sample-rate", type=int, default=16000, help="resample to this rate (default 16000)")
    g.add_argument("--keep-rate", action="store_true", help="keep each file's own sample rate")
    if seed:
        g.add_argument("--seed", type=int, default=0, help="seed of the shuffled sample order (default 0)")
    g.add_argument("--keep-order", action="store_true",
                   help="write the samples in input order (default: shuffled, so no shard holds one label or source)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def options_from_args(args: argparse.Namespace) -> WriterOptions:
    if storage.is_url(args.out):  # an unsupported or read-only URL: an error before any work
        storage.check_url(args.out, write=True, what="--out")
    else:
        output_dir(args.out, create=False)  # a file in the way: an error before any work
    return WriterOptions(
        shard_size=args.shard_size,
        max_shard_bytes=args.max_shard_bytes,
        workers=args.workers,
        sample_rate=args.sample_rate,
        keep_rate=args.keep_rate,
        progress=not args.quiet,
        seed=int(getattr(args, "seed", 0) or 0),
        keep_order=bool(getattr(args, "keep_order", False)),
    )


# --- the per-clip work (runs in the pool) ------------------------------------------------------------------------
def _encode_clip(clip: Clip, sample_rate: int | None):
    """-> ``("ok", clip, flac bytes, json bytes, duration, rate)`` or ``("bad", clip, reason)``."""
    try:
        if clip.render is not None:
            wave, rate = clip.render()
            wave = np.asarray(wave, dtype=np.float32)
            if sample_rate is not None and rate != sample_rate:
                import torch

                wave = audio.resample(torch.from_numpy(wave), rate, sample_rate).numpy()
                rate = sample_rate
        else:
            suffix = Path(clip.path or "").suffix.lower()
            if suffix not in audio.AUDIO_EXTENSIONS:
                return ("bad", clip, f"not an audio file: extension {suffix or '(none)'!r} is not one of "
                        f"{', '.join(audio.AUDIO_EXTENSIONS)}")
            tensor, rate = audio.load_with_rate(clip.path, sample_rate)
            wave = tensor.numpy()
        if wave.ndim != 1 or wave.shape[0] == 0:
            return ("bad", clip, f"expected a non-empty mono waveform, got shape {tuple(wave.shape)}")
        if not np.isfinite(wave).all():
            return ("bad", clip, "the audio holds NaN or infinite samples")
        flac = audio.encode_flac(wave, rate)
    except audio.AudioDecodeError as e:
        return ("bad", clip, e.reason)
    except Exception as e:  # a long conversion never dies on one input: record it and go on
        return ("bad", clip, f"{type(e).__name__}: {e}")
    duration = wave.shape[0] / rate
    meta = dict(clip.meta)
    meta.update(duration=round(duration, 4), sample_rate=int(rate))
    js = json.dumps(meta, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return ("ok", clip, flac, js, duration, int(rate))


def _encode_chunk(clips: list[Clip], sample_rate: int | None) -> list:
    return [_encode_clip(c, sample_rate) for c in clips]


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core already


def _ordered_map(clips: Iterable[Clip], sample_rate: int | None, workers: int, chunk: int = 8) -> Iterator:
    """Encode clips, yielding results in input order; at most ``4 * workers`` chunks in flight."""
    if workers == 0:
        for c in clips:
            yield _encode_clip(c, sample_rate)
        return
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=mp.get_context(method), initializer=_init_worker) as pool:
        pending: deque = deque()
        it = iter(clips)
        done = False
        try:
            while True:
                while not done and len(pending) < 4 * workers:
                    batch = [c for _, c in zip(range(chunk), it)]
                    if not batch:
                        done = True
                        break
                    pending.append(pool.submit(_encode_chunk, batch, sample_rate))
                if not pending:
                    return
                yield from pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


# --- shards ------------------------------------------------------------------------------------------------------
def _member_bytes(name: str, n: int) -> int:
    """Bytes a member takes in the tar: header (plus a PAX header for long or non-ASCII names) and padded data."""
    header = _TAR_BLOCK
    if len(name) >= 100 or not name.isascii():  # a PAX extended header precedes the member
        header += 2 * _TAR_BLOCK + -(-len(name.encode()) // _TAR_BLOCK) * _TAR_BLOCK
    return header + -(-n // _TAR_BLOCK) * _TAR_BLOCK


def _file_bytes(members: int) -> int:
    """Size of a tar file whose members take ``members`` bytes: two end blocks, padded to a 10240-byte record."""
    return -(-(members + 2 * _TAR_BLOCK) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


class _SplitWriter:
    """Writes one split's shards: ``{split}/{split}-NNNNNN.tar.tmp`` -> fsync -> rename to ``.tar``."""

    def __init__(self, root: Path, split: str, shard_size: int, max_bytes: int,
                 on_shard: Callable[[Path, str], None] | None = None):
        self.root, self.split = root, split
        self.on_shard = on_shard  # called with (local file, path in the dataset) once a shard is complete
        self.shard_size, self.max_bytes = shard_size, max_bytes
        self.dir = root / split
        self.dir.mkdir(parents=True, exist_ok=True)
        self.info = SplitInfo()
        self.weights: list[tuple[str, float]] = []
        self.rates: set[int] = set()
        self.durations: list[float] = []  # every written clip's, for the manifest's percentiles
        self.total = 0
        self._file = None
        self._tar: wds.TarWriter | None = None
        self._tmp: Path | None = None
        self._count = self._bytes = 0
        self._duration = 0.0
        self._folds: list = []

    def _open(self) -> None:
        name = f"{self.split}-{len(self.info.shards):06d}.tar"
        self._tmp = self.dir / (name + ".tmp")
        self._file = open(self._tmp, "wb")
        # fixed owner/mtime/mode: identical input -> identical bytes; PAX allows long and non-ASCII keys
        self._tar = wds.TarWriter(self._file, encoder=False, mtime=0, user="audiossl", group="audiossl",
                                  mode=0o444, format="PAX_FORMAT")
        self._count = self._bytes = 0
        self._duration = 0.0
        self._folds = []

    def add(self, key: str, flac: bytes, js: bytes, duration: float, meta: dict, rate: int) -> None:
        size = _member_bytes(key + ".flac", len(flac)) + _member_bytes(key + ".json", len(js))
        if self._tar is not None and (
            self._count >= self.shard_size or (self._count > 0 and _file_bytes(self._bytes + size) > self.max_bytes)
        ):
            self._finish()
        if self._tar is None:
            self._open()
        self._tar.write({"__key__": key, "flac": flac, "json": js})
        self._count += 1
        self._bytes += size
        self._duration += duration
        self._folds.append(meta.get("fold"))
        if "weight" in meta:
            self.weights.append((key, float(meta["weight"])))
        self.total += 1
        self.durations.append(duration)
        self.info.min_duration = duration if self.total == 1 else min(self.info.min_duration, duration)
        self.info.max_duration = max(self.info.max_duration, duration)
        self.rates.add(rate)

    def _finish(self) -> None:
        assert self._tar is not None and self._file is not None and self._tmp is not None
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = self._tmp.with_suffix("")  # drop ".tmp"
        os.replace(self._tmp, final)
        folds = None if any(f is None for f in self._folds) else [int(f) for f in self._folds]
        rel = f"{self.split}/{final.name}"
        self.info.shards.append(ShardInfo(rel, self._count, self._duration, final.stat().st_size, folds))
        self._tar = self._file = self._tmp = None
        if self.on_shard is not None:
            self.on_shard(final, rel)

    def close(self) -> SplitInfo:
        if self._tar is not None:
            self._finish()
        fsync_dir(self.dir)
        self.info.duration_percentiles = duration_percentiles(self.durations)
        return self.info

    def abort(self) -> None:
        """Drop the shard being written (after an error)."""
        try:
            if self._tar is not None:
                self._tar.close()  # completes the tar stream in the temp file, which is then removed
        except Exception:
            pass
        finally:
            if self._file is not None:
                self._file.close()
            if self._tmp is not None and self._tmp.exists():
                self._tmp.unlink()
            self._tar = self._file = self._tmp = None


def duration_percentiles(durations: Sequence[float]) -> dict[str, float]:
    """``{"p50", "p90", "p95", "p99"}`` of clip durations in seconds (linear interpolation, as ``numpy.percentile``)."""
    if not len(durations):
        return {}
    q = np.percentile(np.asarray(durations, dtype=np.float64), PERCENTILES)
    return {f"p{p}": round(float(v), 4) for p, v in zip(PERCENTILES, q)}


# --- the writing order -------------------------------------------------------------------------------------------
def writing_order(clips: Sequence[Clip], seed: int, keep_order: bool) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
    """``(indices of the clips to write, in writing order; rejected as (index, source, reason))``.

    Checks every clip in input order — a bad split name is an error; an unsafe key or a key already taken in its
    split (the first input with it wins, whatever the order later) is rejected — then permutes the accepted ones with
    ``seed`` unless ``keep_order``. The permutation is over the whole input, so every split is shuffled."""
    keep: list[int] = []
    bad: list[tuple[int, str, str]] = []
    keys: dict[str, set[str]] = {}  # per split: the keys taken so far
    for i, clip in enumerate(clips):
        if not _SPLIT_NAME.match(clip.split):
            raise ValueError(f"split name {clip.split!r} must be letters, digits, '_' or '-'")
        if not clip.key or _UNSAFE_KEY.search(clip.key):
            bad.append((i, clip.source, f"unsafe sample key {clip.key!r} (make keys with safe_key)"))
            continue
        seen = keys.setdefault(clip.split, set())
        if clip.key in seen:
            bad.append((i, clip.source, f"duplicate key {clip.key!r} in split {clip.split!r}: an earlier input of the "
                        "split maps to the same key"))
            continue
        seen.add(clip.key)
        keep.append(i)
    order = np.asarray(keep, dtype=np.int64)
    if not keep_order:
        order = order[np.random.default_rng([int(seed), _ORDER_STREAM]).permutation(len(order))]
    return order, bad


# --- the dataset folder ------------------------------------------------------------------------------------------
def _remove_split_files(root: Path, split: str) -> None:
    d = root / split
    if d.is_dir():
        for p in d.iterdir():
            if re.fullmatch(re.escape(split) + r"-\d+\.tar(\.tmp)?", p.name):
                p.unlink()
    w = root / f"{split}_weights.csv"
    if w.exists():
        w.unlink()


def _clear_previous(root: Path) -> None:
    """Remove the manifest first (nothing stale can be listed from here on), then what it listed."""
    old_splits: list[str] = []
    if manifest_path(root).exists():
        try:
            old_splits = list(read_manifest(root).splits)
        except Exception:
            old_splits = []
        manifest_path(root).unlink()
        fsync_dir(root)
    for split in old_splits:
        _remove_split_files(root, split)
    for name in (REJECTED_NAME, MANIFEST_NAME + ".tmp"):
        if (root / name).exists():
            (root / name).unlink()


def _clean_reason(text: str) -> str:
    return " ".join(str(text).split())


def write_rejected(root: Path, rejected: Sequence[tuple[str, str]]) -> None:
    lines = ["source\treason"] + [f"{_clean_reason(s)}\t{_clean_reason(r)}" for s, r in rejected]
    atomic_write(root / REJECTED_NAME, ("\n".join(lines) + "\n").encode("utf-8"))


class _Upload:
    """Publishes a dataset written in a local staging folder to ``url`` (s3://, gs://): clears what a previous run
    left there (its manifest first), uploads each shard as soon as it is complete (one atomic PUT; the local copy is
    then deleted, so staging holds at most one shard per split), then the weights and ``rejected.tsv``; the caller
    writes the manifest last."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def clear_previous(self) -> None:
        try:
            old_splits = list(read_manifest(self.url).splits)
        except Exception:
            old_splits = []
        storage.remove([storage.join(self.url, MANIFEST_NAME)])  # from here on nothing stale is listed
        for split in old_splits:
            self.clear_split(split)
        storage.remove([storage.join(self.url, REJECTED_NAME)])

    def clear_split(self, split: str) -> None:
        old = storage.glob(storage.join(self.url, f"{split}/{split}-*.tar"))
        storage.remove([u for u in old if re.fullmatch(re.escape(split) + r"-\d+\.tar", u.rsplit("/", 1)[-1])]
                       + [storage.join(self.url, f"{split}_weights.csv")])

    def put(self, local: Path, rel: str, delete: bool = False) -> None:
        storage.put_file(local, storage.join(self.url, rel))
        if delete:
            local.unlink()


def write_dataset(
    out: str | Path,
    clips: Iterable[Clip],
    *,
    labels: LabelSpace,
    multi_label: bool,
    options: WriterOptions | None = None,
    params: dict | None = None,
    rejected: Sequence[tuple[str, str]] = (),
    evaluation: dict | None = None,
    ontology: dict | None = None,
) -> WriteReport:
    """Write ``clips`` as a sharded dataset in ``out`` (see the module docstring); returns a :class:`WriteReport`.

    ``out``: a local folder, or an ``s3://`` / ``gs://`` URL: the dataset is then written in a local staging folder
    (``tempfile``'s, i.e. ``$TMPDIR``) and each finished shard uploaded at once, the manifest last (see
    :class:`_Upload`).
    ``clips``: a sequence (a list or a :class:`LazyClips`; any other iterable is read into a list first, as the
    shuffle needs random access). ``rejected`` holds ``(source, reason)`` pairs the converter already found bad
    (reason ``"missing"`` for inputs that do not exist); they go to ``rejected.tsv`` first, followed by what fails
    here, in input order.
    """
    options = options or WriterOptions()
    if storage.is_url(out):
        storage.check_url(str(out), write=True, what="--out")
        staging = tempfile.mkdtemp(prefix="audiossl-prep-")
        try:
            return _write(Path(staging), str(out), _Upload(str(out)), clips, labels, multi_label, options, params, rejected,
                          evaluation, ontology)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    root = output_dir(out)
    return _write(root, str(root), None, clips, labels, multi_label, options, params, rejected, evaluation, ontology)


def _write(root: Path, where: str, upload: _Upload | None, clips, labels, multi_label, options, params, rejected,
           evaluation, ontology) -> WriteReport:
    """:func:`write_dataset` into the local folder ``root`` (published by ``upload`` when ``where`` is a URL)."""
    from tqdm import tqdm

    seq: Sequence[Clip] = clips if isinstance(clips, Sequence) else list(clips)
    order, early_bad = writing_order(seq, options.seed, options.keep_order)
    cleared = False  # the previous dataset in ``out`` stays until the first clip is ready to be written
    target_rate = None if options.keep_rate else options.sample_rate
    writers: dict[str, _SplitWriter] = {}
    late_bad: list[tuple[int, str, str]] = []  # (input index, source, reason) of clips that failed to encode
    t0 = time.perf_counter()
    bar = tqdm(total=len(order), unit="clip", desc=f"writing {storage.display_name(where)}",
               disable=not options.progress, smoothing=0.05)
    on_shard = None if upload is None else (lambda local, rel: upload.put(local, rel, delete=True))
    try:
        results = _ordered_map((seq[int(i)] for i in order), target_rate, options.workers)
        for index, result in zip(order, results):
            bar.update(1)
            if result[0] == "bad":
                late_bad.append((int(index), result[1].source, result[2]))
                continue
            _, clip, flac, js, duration, rate = result
            w = writers.get(clip.split)
            if not cleared:
                _clear_previous(root)
                if upload is not None:
                    upload.clear_previous()
                cleared = True
            if w is None:
                _remove_split_files(root, clip.split)
                if upload is not None:
                    upload.clear_split(clip.split)
                w = writers[clip.split] = _SplitWriter(root, clip.split, options.shard_size, options.max_shard_bytes,
                                                       on_shard)
            w.add(clip.key, flac, js, duration, clip.meta, rate)
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        bar.close()
    bad: list[tuple[str, str]] = list(rejected) + [(s, r) for _, s, r in sorted(early_bad + late_bad)]
    if not writers:
        previous = storage.exists(storage.join(where, MANIFEST_NAME)) if upload else manifest_path(root).exists()
        _refuse_empty(root, where, upload, bad, previous=previous)
    splits = {name: w.close() for name, w in writers.items()}
    for name, w in writers.items():
        if w.weights:  # in shard order, as the training stream reads them
            rows = ["key,weight"] + [f"{k},{v:.6g}" for k, v in w.weights]
            atomic_write(root / f"{name}_weights.csv", ("\n".join(rows) + "\n").encode("utf-8"))
            splits[name].weights = f"{name}_weights.csv"
            if upload is not None:
                upload.put(root / f"{name}_weights.csv", f"{name}_weights.csv")
    write_rejected(root, bad)
    if upload is not None:
        upload.put(root / REJECTED_NAME, REJECTED_NAME)
    rates = set().union(*(w.rates for w in writers.values())) if writers else {target_rate or options.sample_rate}
    run_params = dict(params or {})
    run_params.update(
        shard_size=options.shard_size,
        max_shard_bytes=options.max_shard_bytes,
        sample_rate=target_rate,
        keep_rate=options.keep_rate,
        shuffled=not options.keep_order,
        order_seed=options.seed,
    )
    manifest = Manifest(
        labels=labels,
        multi_label=multi_label,
        sample_rate=next(iter(rates)) if len(rates) == 1 else None,
        splits=splits,
        params=run_params,
        evaluation=evaluation,
        ontology=ontology,
    )
    write_manifest(where, manifest)  # last: from here on the dataset exists
    report = WriteReport(manifest, {k: v.samples for k, v in splits.items()}, bad, time.perf_counter() - t0)
    _print_summary(where, report)
    return report


def _refuse_empty(root: Path, where: str, upload: _Upload | None, bad: list[tuple[str, str]], previous: bool) -> None:
    """No clip made it: an error that says why, leaving a dataset already in ``where`` as it was."""
    missing = sum(1 for _, r in bad if r == "missing")
    reasons = "; ".join(f"{s}: {r}" for s, r in bad[:3]) + ("; ..." if len(bad) > 3 else "")
    if bad and not previous:
        write_rejected(root, bad)
        if upload is not None:
            upload.put(root / REJECTED_NAME, REJECTED_NAME)
    listed = f" (listed in {storage.join(where, REJECTED_NAME)})" if bad and not previous else ""
    kept = f"; the dataset already in {where} was left as it was" if previous else ""
    raise DatasetError(
        f"no clip was written to {where}: {len(bad) - missing} inputs rejected, {missing} missing{listed}"
        + (f" - {reasons}" if reasons else " - the input lists no clips") + kept
    )


def _print_summary(root: str, r: WriteReport) -> None:
    per_split = ", ".join(
        f"{name}: {info.samples} clips in {len(info.shards)} shards ({info.duration / 3600:.2f} h)"
        for name, info in r.manifest.splits.items()
    )
    rate = r.num_written / r.seconds if r.seconds > 0 else 0.0
    print(f"{root}: written {r.num_written} / rejected {r.num_rejected} / missing {r.num_missing} "
          f"in {r.seconds:.1f} s ({rate:.0f} clips/s)")
    if per_split:
        print(f"  {per_split}")
    if r.rejected:
        print(f"  rejected and missing inputs are listed with the reason in {storage.join(root, REJECTED_NAME)}")
    sys.stdout.flush()

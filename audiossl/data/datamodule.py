"""``AudioDataModule``: a prepared shard folder as a LightningDataModule.

Batches are ``{"audio": float32 [B, N], "target": float32 [B, C] multi-hot or int64 [B], "key": list[str]}`` with
``N = round(clip_seconds * sample_rate)``; features are computed by the LightningModule on its device.

Epochs and exact resume. The training loader streams epoch ``e`` (see :mod:`audiossl.data.pipeline`); ``e`` is read
from the Trainer when the loader is iterated (``fit_loop.epoch_progress.current.processed``, i.e. the epoch about to
run; without a Trainer an internal counter advances on each ``iter()``), so one ``train_dataloader()`` serves every
epoch and ``reload_dataloaders_every_n_epochs`` is not needed. ``state_dict()`` holds
``{"epoch", "batches_done", ...}`` — batches (not optimizer steps, so gradient accumulation changes nothing) that the
model consumed in that epoch, from the Trainer's ``batch_progress`` (or, without a Trainer, the batches the loader
handed out); after ``load_state_dict()`` the next iteration rebuilds that epoch and skips those batches before
decoding. The same state is exposed by the loader, so Lightning treats it as resumable. Exact resume requires the same
``seed``, ``batch_size``, ``epoch_size``, ``num_workers``, ``open_shards`` and world size.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from audiossl.data import storage
from audiossl.data.manifest import Manifest, read_manifest
from audiossl.data.pipeline import EvalStream, ShardRef, TrainStream, batches_per_rank, shard_refs
from audiossl.data.writer import parse_size
from audiossl.errors import DatasetError

log = logging.getLogger("audiossl.data")


class _TrainLoader(DataLoader):
    """A DataLoader that asks its datamodule, on every ``iter()``, which epoch to stream and how far to skip."""

    def __init__(self, dataset: TrainStream, datamodule: "AudioDataModule | None" = None, **kwargs):
        super().__init__(dataset, **kwargs)
        self.datamodule = datamodule
        self.epoch: int | None = None
        self.batches_yielded = 0

    def __iter__(self):
        epoch, skip = self.datamodule._begin_epoch() if self.datamodule is not None else (0, 0)
        self.dataset.set_epoch(epoch, skip)
        self.epoch, self.batches_yielded = epoch, skip
        return self._counting(super().__iter__())

    def _counting(self, it):
        for batch in it:
            self.batches_yielded += 1
            yield batch

    # Lightning saves and restores "stateful" loaders itself; delegate to the datamodule (same state, idempotent).
    def state_dict(self) -> dict:
        return self.datamodule.state_dict() if self.datamodule is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.datamodule is not None and state_dict:
            self.datamodule.load_state_dict(state_dict)


class AudioDataModule(L.LightningDataModule):
    """Sharded audio prepared by ``audiossl prep``, streamed for training and evaluation.

    Args:
        root: dataset folder holding ``manifest.json`` and the shards, or its URL: ``s3://bucket/prefix``,
            ``gs://...``, ``https://host/path``, ``pipe:COMMAND`` (:mod:`audiossl.data.storage`).
        train_split: training split; several joined with ``+`` (``balanced_train+unbalanced_train``) read as one.
        eval_split: evaluation split (default: ``eval`` if the dataset has it, else the manifest's evaluation split,
            else none).
        eval_fold: ESC-50 style cross-validation: samples with ``fold == eval_fold`` form the evaluation set and the
            others the training set, both read from ``train_split``.
        batch_size: training batch size per rank (per device).
        eval_batch_size: evaluation batch size (default: ``batch_size``).
        num_workers: DataLoader worker processes per rank (0: load in the main process).
        clip_seconds: crop/pad every clip to this length (random window for training, the first window for
            evaluation, zeros appended); default (``None``): see :attr:`clip_seconds` — the clip length the
            dataset declares, else the 95th percentile of its training clips' durations rounded up to 0.1 s. The
            chosen value is printed and written into ``hparams`` (so into ``hparams.yaml`` and checkpoints).
        shuffle_buffer: samples in each worker's shuffle buffer (raw FLAC bytes, ~190 kB per 10 s clip).
        open_shards: shards each training reader streams at once, its samples a seeded random merge of theirs, so
            consecutive samples come from different shards even when a shard is sorted by label.
        cache_dir: for a URL ``root``: a local folder where every shard read in full is kept (shared by all workers
            and ranks of the machine), so later epochs read it from disk.
        cache_max_bytes: the cache's size bound (``"200G"``, ``"512M"`` or bytes); least recently used shards go.
        retries: attempts after the first for each remote request that fails transiently (connection reset, time-out,
            5xx, throttling), with exponential back-off from ``retry_wait`` seconds; a shard still failing is skipped,
            counted and reported, and the batch counts stay the same.
        retry_wait: seconds before the first retry (doubled each time, with jitter, at most 30 s).
        epoch_size: training samples per epoch over all ranks (default: the training set's size); each rank yields
            ``epoch_size // (world_size * batch_size)`` batches.
        seed: seeds shard order, shuffling and crops; a run is reproducible from it.
        weighted: AudioSet-2M style sampling: each epoch draws without replacement by the samples' ``weight``.
        pin_memory: pin batches for faster host-to-GPU copies (default: when CUDA is available).
    """

    def __init__(
        self,
        root: str,
        train_split: str = "train",
        eval_split: str | None = None,
        eval_fold: int | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        clip_seconds: float | None = None,
        shuffle_buffer: int = 1000,
        epoch_size: int | None = None,
        seed: int = 0,
        weighted: bool = False,
        pin_memory: bool | None = None,
        open_shards: int = 8,
        cache_dir: str | None = None,
        cache_max_bytes: int | str = "50G",
        retries: int = 5,
        retry_wait: float = 1.0,
    ):
        super().__init__()
        if batch_size < 1:
            raise DatasetError(f"batch_size must be >= 1, got {batch_size}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise DatasetError(f"eval_batch_size must be >= 1, got {eval_batch_size}")
        if num_workers < 0:
            raise DatasetError(f"num_workers must be >= 0, got {num_workers}")
        if eval_split is not None and eval_fold is not None:
            raise DatasetError("set eval_split or eval_fold, not both (eval_fold takes its samples from train_split)")
        if clip_seconds is not None and clip_seconds <= 0:
            raise DatasetError(f"clip_seconds must be positive, got {clip_seconds}")
        if epoch_size is not None and epoch_size < 1:
            raise DatasetError(f"epoch_size must be >= 1, got {epoch_size}")
        if open_shards < 1:
            raise DatasetError(f"open_shards must be >= 1, got {open_shards}")
        if retries < 0 or retry_wait < 0:
            raise DatasetError(f"retries and retry_wait must be >= 0, got {retries}, {retry_wait}")
        try:
            max_bytes = parse_size(str(cache_max_bytes))
        except Exception:
            raise DatasetError(f"cache_max_bytes {cache_max_bytes!r} is not a size (use e.g. 200G or 512M)") from None
        if storage.is_url(root):
            storage.check_url(str(root))  # an unsupported scheme or a missing extra: a clear error now
        elif cache_dir is not None:
            log.info("%s is a local folder: cache_dir %s is not used", root, cache_dir)
        self.save_hyperparameters()
        self.root = str(root)
        self.io_options = storage.IOOptions(retries=retries, retry_wait=retry_wait, cache_dir=cache_dir,
                                            cache_max_bytes=max_bytes)
        self.train_split = train_split
        self._eval_split = eval_split
        self.eval_fold = eval_fold
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self._clip_seconds = clip_seconds
        self.shuffle_buffer = shuffle_buffer
        self._epoch_size = epoch_size
        self.seed = seed
        self.weighted = weighted
        self.open_shards = open_shards
        self._default_clip: float | None = None  # clip_seconds chosen from the manifest, once
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._manifest: Manifest | None = None
        self._train_refs: list[ShardRef] | None = None
        self._eval_refs: list[ShardRef] | None = None
        self._loader: _TrainLoader | None = None
        self._next_epoch = 0  # without a Trainer: the epoch the next iter() streams
        self._stream_epoch: int | None = None  # the epoch the training loader is (or was last) streaming
        self._resume: dict | None = None  # loaded state not yet applied

    # --- what the dataset is (cheap, lazy: usable right after construction) --------------------------------------
    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = read_manifest(self.root)
        return self._manifest

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest.labels.names)

    @property
    def multi_label(self) -> bool:
        return self.manifest.multi_label

    @property
    def sample_rate(self) -> int:
        """The rate of the batches: the dataset's (16000 when ``--keep-rate`` left mixed rates: resampled)."""
        return int(self.manifest.sample_rate or 16000)

    @property
    def stats(self) -> dict | None:
        """fbank ``{"mean", "std", ...}`` written by ``audiossl stats``, else ``None``."""
        return self.manifest.stats

    @property
    def train_splits(self) -> list[str]:
        return [s for s in self.train_split.split("+") if s]

    @property
    def eval_split(self) -> str | None:
        """The evaluation split (``None`` with ``eval_fold``, whose samples come from the training split)."""
        if self.eval_fold is not None:
            return None
        return self._eval_split if self._eval_split is not None else self.manifest.evaluation_split()

    @property
    def has_eval(self) -> bool:
        return self.eval_fold is not None or self.eval_split is not None

    @property
    def clip_seconds(self) -> float:
        """The window every clip is cropped or padded to, in seconds.

        ``clip_seconds`` when given; else the clip length the dataset declares (``params.clip_seconds``, the
        synthetic corpus); else the **95th percentile of the training clips' durations** (the largest over the
        training splits; ``duration_percentiles`` of the manifest), rounded up to a multiple of 0.1 s; for a manifest
        written before percentiles were recorded, the longest training clip.

        Why the 95th percentile and not the longest clip: a batch costs its window (attention grows with its square),
        and in a real folder a few long recordings would otherwise set the window of every batch — 19 in 20 clips
        still fit whole and the rest are cropped (a random window in training, the first in evaluation). Rounding up
        keeps the number readable and leaves the percentile clip whole. The value is printed once and stored in
        ``hparams["clip_seconds"]``.
        """
        if self._clip_seconds is not None:
            return float(self._clip_seconds)
        if self._default_clip is None:
            value, why = self._choose_clip_seconds()
            self._default_clip = value
            # into hparams (checkpoints) and hparams_initial (what loggers write as hparams.yaml)
            self.save_hyperparameters({**self.hparams, "clip_seconds": value})
            if rank_zero_only.rank == 0:
                # stderr: stdout may be a verb's result (evaluate prints its metrics as JSON there)
                print(f"{self.root}: clip_seconds not set, using {value:g} s ({why})", file=sys.stderr, flush=True)
        return self._default_clip

    def _choose_clip_seconds(self) -> tuple[float, str]:
        m = self.manifest
        if m.params.get("clip_seconds"):
            return float(m.params["clip_seconds"]), "the clip length the dataset declares"
        splits = [s for s in self.train_splits if s in m.splits] or list(m.splits)
        infos = [m.splits[s] for s in splits if m.splits[s].samples > 0]
        longest = max((i.max_duration for i in infos), default=0.0)
        if longest <= 0:
            raise DatasetError(f"{self.root}: cannot infer clip_seconds from an empty dataset; set clip_seconds")
        p95 = [i.duration_percentile(95) for i in infos]
        if any(p is None for p in p95):
            return longest, f"the longest clip of {'+'.join(splits)}; this manifest records no duration percentiles"
        p = max(p95)
        value = max(0.1, math.ceil(round(p * 10, 6)) / 10)
        return value, (f"95th percentile of the {'+'.join(splits)} clip durations, {p:.3g} s, rounded up to 0.1 s; "
                       f"longest clip {longest:.3g} s")

    def default_target_frames(self, frame_shift_ms: float = 10.0, patch_size: int = 16,
                              frame_length_ms: float = 25.0) -> int:
        """Front-end ``target_length`` (fbank frames) for this :attr:`clip_seconds`: the frames a clip of
        :attr:`clip_samples` gives (kaldi framing, ``1 + (N - window) // hop``), rounded up to a multiple of
        ``patch_size`` so the time axis splits into whole patches (e.g. 1.0 s -> 98 frames -> 112; 10 s -> 1008)."""
        win = int(self.sample_rate * frame_length_ms * 0.001)
        hop = int(self.sample_rate * frame_shift_ms * 0.001)
        frames = max(1, 1 + (self.clip_samples - win) // hop)
        return int(-(-frames // patch_size) * patch_size)

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    # --- shards ---------------------------------------------------------------------------------------------------
    def _fold_filter(self, train: bool):
        if self.eval_fold is None:
            return None
        k = int(self.eval_fold)
        folds = sorted({f for s in self.train_splits if s in self.manifest.splits
                        for shard in self.manifest.splits[s].shards for f in (shard.folds or ())})
        if folds and k not in folds:
            raise DatasetError(f"eval_fold {k} is not a fold of {self.root} (split {self.train_split!r} has folds {folds})")
        return (lambda f: f != k) if train else (lambda f: f == k)

    def train_refs(self) -> list[ShardRef]:
        if self._train_refs is None:
            for s in self.train_splits:
                self.manifest.split(s)  # a clear error for a missing split
            self._train_refs = shard_refs(self.root, self.manifest, self.train_splits, self._fold_filter(True),
                                          self.weighted)
        return self._train_refs

    def eval_refs(self) -> list[ShardRef] | None:
        if not self.has_eval:
            return None
        if self._eval_refs is None:
            splits = self.train_splits if self.eval_fold is not None else [self.eval_split]
            self._eval_refs = shard_refs(self.root, self.manifest, splits, self._fold_filter(False))
        return self._eval_refs

    @property
    def train_size(self) -> int:
        """Training samples (after the fold filter)."""
        return sum(len(r.candidates()) for r in self.train_refs())

    @property
    def epoch_size(self) -> int:
        return self._epoch_size if self._epoch_size is not None else self.train_size

    # --- Lightning hooks ------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Nothing: the data is prepared by ``audiossl prep``."""

    def setup(self, stage: str | None = None) -> None:
        """Read the manifest, choose ``clip_seconds`` if not given (so the LightningModule's ``setup``, which runs
        after this one, can read it, and the hparams logged at the start of fitting hold it) and resolve the shards
        of the stage's splits (errors surface here, on every rank)."""
        self.clip_seconds
        if stage in (None, "fit"):
            self.train_refs()
        if stage in (None, "fit", "validate", "test", "predict"):
            self.eval_refs()

    def _rank_world(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        trainer = self._trainer_or_none()
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        return 0, 1

    def _trainer_or_none(self):
        return getattr(self, "trainer", None)

    def train_dataset(self, rank: int | None = None, world_size: int | None = None) -> TrainStream:
        """The training stream of ``rank`` of ``world_size`` (default: this process's)."""
        r, w = self._rank_world()
        rank, world_size = (r if rank is None else rank), (w if world_size is None else world_size)
        m = self.manifest
        return TrainStream(
            self.train_refs(),
            num_classes=m.num_classes,
            multi_label=m.multi_label,
            sample_rate=self.sample_rate,
            clip_samples=self.clip_samples,
            batch_size=self.batch_size,
            epoch_size=self.epoch_size,
            seed=self.seed,
            shuffle_buffer=self.shuffle_buffer,
            weighted=self.weighted,
            rank=rank,
            world_size=world_size,
            open_shards=self.open_shards,
            io_options=self.io_options,
        )

    def eval_dataset(self, rank: int | None = None, world_size: int | None = None) -> EvalStream | None:
        """The evaluation stream of ``rank`` of ``world_size``; ``None`` when there is no evaluation set."""
        refs = self.eval_refs()
        if refs is None:
            return None
        r, w = self._rank_world()
        m = self.manifest
        return EvalStream(
            refs,
            num_classes=m.num_classes,
            multi_label=m.multi_label,
            sample_rate=self.sample_rate,
            clip_samples=self.clip_samples,
            batch_size=self.eval_batch_size,
            rank=r if rank is None else rank,
            world_size=w if world_size is None else world_size,
            io_options=self.io_options,
        )

    def train_dataloader(self) -> DataLoader:
        ds = self.train_dataset()
        slots = ds.world_size * max(1, self.num_workers)
        if len(ds.shards) < slots:
            log.warning(
                "%s: %d training shards for %d reading slots (world size %d x %d workers): every slot reads every "
                "shard and keeps every %d-th sample. Write smaller shards (--shard-size) for large datasets.",
                self.root, len(ds.shards), slots, ds.world_size, max(1, self.num_workers), slots,
            )
        self._warn_small_shuffle_buffer(ds)
        if len(ds) < max(1, self.num_workers):
            log.warning("%s: %d batches per epoch for %d workers: some workers idle", self.root, len(ds),
                        self.num_workers)
        # Lightning warns that a sized IterableDataset may be "inaccurate" with workers; this one's length is exact.
        warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__` defined.*")
        self._loader = _TrainLoader(
            ds, datamodule=self, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
            multiprocessing_context=self._worker_context(),
        )
        return self._loader

    def _warn_small_shuffle_buffer(self, ds: TrainStream) -> None:
        """A shard written in input order (``prep --keep-order``, or by an audiossl that did not shuffle) may hold
        long runs of one label; a shuffle buffer smaller than a shard cannot break them up (the interleaving of
        ``open_shards`` shards helps, but only by that factor). Shards the writer shuffled need no warning."""
        if self.manifest.params.get("shuffled") is True:
            return
        shard_samples = statistics.median(len(s.candidates()) for s in ds.shards)
        if self.shuffle_buffer < shard_samples:
            log.warning(
                "%s: the shards were written in input order (no record of a shuffle in the manifest) and hold about "
                "%d samples each, more than the shuffle buffer (%d); if the input was sorted (by label, speaker, "
                "folder), batches will hold few labels. Re-run `audiossl prep` (it shuffles unless --keep-order) or "
                "raise --data.shuffle_buffer (and --data.open_shards).",
                self.root, shard_samples, self.shuffle_buffer,
            )

    def _eval_loader(self):
        ds = self.eval_dataset()
        if ds is None:
            return []
        return DataLoader(ds, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
                          multiprocessing_context=self._worker_context())

    def _worker_context(self):
        """How worker processes start: from a fork server once torch.distributed runs, else the platform default.

        A plain ``fork`` of a process whose communication threads (gloo, NCCL) may hold a lock can leave the child
        hung before it runs a line (seen here: about 1 in 10 two-rank CPU runs stalled at the start of fitting). The
        fork server is a clean single-threaded process that imports the data pipeline (and so torch) once; workers
        are forked from it."""
        if self.num_workers > 0 and torch.distributed.is_available() and torch.distributed.is_initialized():
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["audiossl.data.pipeline"])
            return ctx
        return None

    def val_dataloader(self):
        """The evaluation set, each sample exactly once (an empty list when there is none)."""
        return self._eval_loader()

    def test_dataloader(self):
        return self._eval_loader()

    def predict_dataloader(self):
        return self._eval_loader()

    # --- epochs and exact resume ----------------------------------------------------------------------------------
    def _begin_epoch(self) -> tuple[int, int]:
        """Called by the training loader on ``iter()``: ``(epoch to stream, batches of it to skip)``."""
        trainer = self._trainer_or_none()
        if self._resume is not None:
            epoch, skip = int(self._resume["epoch"]), int(self._resume["batches_done"])
            self._resume = None
        elif trainer is not None:
            epoch, skip = int(trainer.fit_loop.epoch_progress.current.processed), 0
        else:
            epoch, skip = self._next_epoch, 0
        self._stream_epoch, self._next_epoch = epoch, epoch + 1
        return epoch, skip

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "batches_done", ...}``: where the training stream stands (see the module docstring)."""
        if self._resume is not None:  # loaded but not applied yet: keep it
            return dict(self._resume)
        rank_batches = self._rank_batches()
        trainer = self._trainer_or_none()
        if self._stream_epoch is None:
            epoch = int(trainer.fit_loop.epoch_progress.current.processed) if trainer is not None else self._next_epoch
            done = 0
        else:
            epoch = self._stream_epoch
            if trainer is not None:
                fit = trainer.fit_loop
                done = int(fit.epoch_loop.batch_progress.current.processed)
                if fit.epoch_progress.current.processed > epoch:  # that epoch's batches are over
                    epoch, done = epoch + 1, 0
            else:
                done = self._loader.batches_yielded if self._loader is not None else 0
        if rank_batches is not None and done >= rank_batches:
            epoch, done = epoch + 1, 0
        _, world = self._rank_world()
        return {
            "epoch": epoch,
            "batches_done": done,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "epoch_size": self._epoch_size,
            "num_workers": self.num_workers,
            "world_size": world,
            "open_shards": self.open_shards,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume: the next training iteration streams ``epoch`` from batch ``batches_done`` on."""
        if not state_dict or "epoch" not in state_dict:
            return
        _, world = self._rank_world()
        now = {"seed": self.seed, "batch_size": self.batch_size, "epoch_size": self._epoch_size,
               "num_workers": self.num_workers, "world_size": world, "open_shards": self.open_shards}
        changed = {k: (state_dict[k], v) for k, v in now.items() if k in state_dict and state_dict[k] != v}
        if changed:
            log.warning("resuming the data stream with changed settings %s (saved, now): the resumed epoch will "
                        "not replay the interrupted one exactly", changed)
        self._resume = {"epoch": int(state_dict["epoch"]), "batches_done": int(state_dict.get("batches_done", 0))}
        self._next_epoch = self._resume["epoch"]

    def _rank_batches(self) -> int | None:
        try:
            return batches_per_rank(self.epoch_size, self.batch_size, self._rank_world()[1])
        except Exception:
            return None

    def describe(self) -> str:
        m = self.manifest
        return (f"{storage.display_name(self.root)}: {m.num_classes} classes ({'multi' if m.multi_label else 'single'}-label), "
                f"train {self.train_split} ({self.train_size} clips), eval "
                f"{self.eval_split if self.eval_fold is None else f'fold {self.eval_fold}'}, "
                f"{self.clip_seconds:g} s clips at {self.sample_rate} Hz")

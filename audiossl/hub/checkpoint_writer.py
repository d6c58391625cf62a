"""Atomic checkpoint writes: a kill during a save never leaves a corrupt ``last.ckpt``.

Lightning writes checkpoints through a ``CheckpointIO`` plugin; this one writes to a temporary file in the same
directory, flushes and fsyncs it, then ``os.replace``s it over the target (atomic on POSIX) and fsyncs the directory.
It covers every save: ``ModelCheckpoint`` files, ``last.ckpt`` and the SLURM requeue checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        try:
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:  # some filesystems do not support fsync on directories
            pass


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` always resumes exactly where training stopped.

    Stock Lightning refreshes ``last.ckpt`` when the epoch loop winds down, *after* it has marked the epoch complete:
    a run stopped mid-epoch (``max_steps`` reached, or a requeue signal) then resumes at the start of the next epoch
    with a new shard order, and the rest of the stopped epoch is never seen. Here ``last.ckpt`` is written at the
    stopping step itself, from the same state as a periodic step checkpoint (``on_train_batch_end``), and refreshed
    at the end of training only for a step not saved yet — including the end of a resumed run (stock Lightning
    skips it once a ``last`` file was ever written)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.save_last and self._last_global_step_saved != trainer.global_step and _stops_after_this_step(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer, pl_module) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def _stops_after_this_step(trainer) -> bool:
    """Training ends once this batch is done: a stop was asked for (a signal, early stopping), or ``max_steps`` is
    reached (with gradient accumulation: by the optimizer step this batch completed)."""
    if trainer.should_stop:
        return True
    max_steps = trainer.max_steps
    return max_steps is not None and max_steps >= 0 and trainer.global_step >= max_steps


class BestCheckpoint(ModelCheckpoint):
    """``checkpoints/best.ckpt``: the checkpoint with the highest ``val/selection`` so far (mAP for multi-label data,
    accuracy otherwise), refreshed after each validation.

    The references report this number (EAT/SSLAM ``best_checkpoint_metric``, AudioMAE "Max mAP"), but their
    validation set is the evaluation set: the choice is **test-selected**, so it is an optimistic estimate. audiossl's
    headline number stays the last checkpoint's; ``audiossl evaluate --best_ckpt_path`` reports both, labelled. A
    validation that logged no ``val/selection`` (no evaluation data) is skipped silently."""

    def __init__(self, dirpath: str, monitor: str = "val/selection", filename: str = "best"):
        super().__init__(dirpath=dirpath, monitor=monitor, mode="max", filename=filename, save_top_k=1,
                         save_last=False, auto_insert_metric_name=False, enable_version_counter=False)

    def _save_topk_checkpoint(self, trainer, monitor_candidates) -> None:
        if self.monitor not in monitor_candidates:
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)

"""Checkpoint weight averaging, as AST reports its AudioSet numbers (``traintest.py``: ``validate_wa``).

AST saves the model after every epoch and, at the end, averages the saved weights of epochs ``wa_start .. wa_end``
(1-based; AS-2M 1..5, AS-20K 6..25): ``sum of the state dicts / count``. ``EpochWeightAverage`` does the same without
keeping every epoch's file: at the end of each epoch in range it adds the module's state to a running sum, and when
training ends it writes ``checkpoints/averaged.ckpt`` -- an ordinary checkpoint (``state_dict`` + the ``audiossl``
entry) that ``audiossl evaluate`` / ``export`` read like any other. The running sum (fp32, as AST sums) is part of the
callback's state, so a resumed run averages exactly what an unbroken one would; it costs one more copy of the weights
in every checkpoint while it is non-empty.

    trainer:
      callbacks:
        - class_path: audiossl.tasks.weight_averaging.EpochWeightAverage
          init_args: {first_epoch: 1, last_epoch: 5}
"""

from __future__ import annotations

import os

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from audiossl.hub.checkpoint_writer import AtomicCheckpointIO
from audiossl.errors import ConfigError


class EpochWeightAverage(Callback):
    def __init__(self, first_epoch: int = 1, last_epoch: int | None = None, filename: str = "averaged.ckpt",
                 dirpath: str | None = None):
        """
        Args:
            first_epoch/last_epoch: the epochs (1-based, inclusive; ``None``: to the end) whose end-of-epoch weights
                are averaged.
            filename: written in ``dirpath`` (default ``RUN/checkpoints``) when training ends.
        """
        if first_epoch < 1 or (last_epoch is not None and last_epoch < first_epoch):
            raise ConfigError(f"EpochWeightAverage needs 1 <= first_epoch <= last_epoch, got {first_epoch}, "
                              f"{last_epoch}")
        self.first_epoch, self.last_epoch = int(first_epoch), last_epoch
        self.filename, self.dirpath = filename, dirpath
        self.sum: dict[str, torch.Tensor] = {}
        self.count = 0
        self.epochs: list[int] = []

    @property
    def state_key(self) -> str:
        return f"EpochWeightAverage{{first={self.first_epoch}, last={self.last_epoch}}}"

    def _in_range(self, epoch: int) -> bool:
        return epoch >= self.first_epoch and (self.last_epoch is None or epoch <= self.last_epoch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1  # 1-based, as AST counts
        if not self._in_range(epoch) or epoch in self.epochs:
            return
        for k, v in pl_module.state_dict().items():
            v = v.detach().to("cpu")
            if torch.is_floating_point(v):
                self.sum[k] = self.sum[k] + v.float() if k in self.sum else v.float().clone()
            else:  # integer buffers: the last one (AST's models have none)
                self.sum[k] = v.clone()
        self.count += 1
        self.epochs.append(epoch)

    def averaged_state(self, like: dict) -> dict:
        """The mean of the summed states, each entry in the dtype of ``like`` (the module's state dict)."""
        return {k: (v / self.count).to(like[k].dtype) if torch.is_floating_point(v) else v for k, v in self.sum.items()}

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.count or not trainer.is_global_zero:
            return
        state = self.averaged_state(pl_module.state_dict())
        ckpt = {"state_dict": state, "global_step": int(trainer.global_step), "epoch": int(trainer.current_epoch),
                "averaged_epochs": list(self.epochs)}
        meta = getattr(pl_module, "audiossl_metadata", None)
        if callable(meta):
            ckpt["audiossl"] = {**meta(), "averaged_epochs": list(self.epochs)}
        path = os.path.join(self.dirpath or os.path.join(trainer.default_root_dir, "checkpoints"), self.filename)
        AtomicCheckpointIO().save_checkpoint(ckpt, path)
        rank_zero_info(f"wrote {path}: the mean of the weights after epochs {self.epochs}")

    def state_dict(self) -> dict:
        return {"sum": self.sum, "count": self.count, "epochs": list(self.epochs)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.sum = dict(state_dict.get("sum", {}))
        self.count = int(state_dict.get("count", 0))
        self.epochs = list(state_dict.get("epochs", []))

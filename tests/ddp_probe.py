"""A callback that records, per rank, what a training subprocess saw: the keys of every training and evaluation batch,
the gathered evaluation keys, the world size and the DDP settings. Loaded by the training subprocesses of
``test_ddp.py``/``test_slurm.py`` through ``--trainer.callbacks+=ddp_probe.KeyProbe`` (``tests/`` on PYTHONPATH);
it writes ``$AUDIOSSL_PROBE_DIR/rank{R}-pid{P}.json`` when fit ends. ``AUDIOSSL_PROBE_SLEEP=S`` pauses S seconds after
each training batch."""

from __future__ import annotations

import json
import os
import time

import lightning as L


class KeyProbe(L.Callback):
    def __init__(self):
        super().__init__()
        self.train: list[dict] = []
        self.val: list[list[str]] = []
        self.gathered: list[list[str]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train.append({
            "epoch": int(trainer.current_epoch),
            "batch_idx": int(batch_idx),
            "global_step": int(trainer.global_step),
            "keys": list(batch["key"]),
        })
        pause = float(os.environ.get("AUDIOSSL_PROBE_SLEEP", "0"))
        if pause > 0:  # slows a run down (without changing its numbers) so that a test can interrupt it mid-way
            time.sleep(pause)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self.val.append(list(batch["key"]))

    def on_validation_end(self, trainer, pl_module) -> None:
        # after the module's on_validation_epoch_end, which gathers the keys of every rank
        if not trainer.sanity_checking and getattr(pl_module, "eval_keys", None) is not None:
            self.gathered.append(list(pl_module.eval_keys))

    def on_fit_end(self, trainer, pl_module) -> None:
        out = os.environ.get("AUDIOSSL_PROBE_DIR")
        if not out:
            return
        strategy = trainer.strategy
        info = {
            "rank": int(trainer.global_rank),
            "world_size": int(trainer.world_size),
            "strategy": type(strategy).__name__,
            "find_unused_parameters": bool(getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters", False)),
            "num_workers": int(trainer.datamodule.num_workers),
            "slurm_ntasks": os.environ.get("SLURM_NTASKS"),
            "slurm_procid": os.environ.get("SLURM_PROCID"),
            "global_step": int(trainer.global_step),
            "train": self.train,
            "val": self.val,
            "gathered": self.gathered,
        }
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"rank{trainer.global_rank}-pid{os.getpid()}.json"), "w") as f:
            json.dump(info, f)


class StopAtStep(L.Callback):
    """Asks the Trainer to stop after optimizer step ``step``, as the requeue signal handler does."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True

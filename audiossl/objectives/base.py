"""``PretrainModule``: what every self-supervised objective shares.

A subclass implements ``compute_loss(fbank, generator, num_frames=None) -> dict`` (a scalar ``loss`` plus anything to
log; ``num_frames [B]``: real frames per row, for the padding mask, ``None`` when nothing is masked) and, if it has a
teacher, ``teacher_update``. The base owns:

* the student encoder (built from a registry spec) and the device-side front end — waveforms arrive from the data
  workers, the fbank runs here, on the training device;
* the optimiser: AdamW, betas (0.9, 0.95), weight decay 0.05 except on biases, norms, and tokens; a linear warm-up
  and a cosine decay to ``min_lr`` over ``trainer.max_steps`` (gradient clipping is the Trainer's
  ``gradient_clip_val``);
* a per-step random generator seeded by (seed, rank, step): masks and noise depend only on these, so a resumed run
  draws exactly what an uninterrupted one would;
* the self-describing checkpoint entry ``checkpoint["audiossl"]`` (encoder + front-end configs, objective name);
* ``init_from``: start the student (and the teacher) from another audiossl checkpoint (SSLAM starts from EAT).
"""

from __future__ import annotations

import math
import os
from typing import Any

import lightning as L
import torch
import torch.nn as nn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from audiossl.errors import DatasetError
from audiossl.features import AUDIOSET_MEAN, AUDIOSET_STD, FrontEnd, FrontEndConfig
from audiossl.models import build_encoder
from audiossl.objectives.ema import EMATeacher

CHECKPOINT_FORMAT = 1


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norm weights (all 1-D parameters) and token/position tables get no weight decay."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or leaf in ("prefix_tokens", "pos_table", "mask_token", "cls_token")


def param_groups(named: list[tuple[str, torch.Tensor]], weight_decay: float, lr_scale: dict | None = None) -> list[dict]:
    """AdamW groups: (decay / no decay) x (optional per-parameter lr scale, e.g. layer decay)."""
    groups: dict[tuple[bool, float], list] = {}
    for n, p in named:
        if not p.requires_grad:
            continue
        scale = (lr_scale or {}).get(n, 1.0)
        groups.setdefault((no_decay(n, p), scale), []).append(p)
    return [
        {"params": ps, "weight_decay": 0.0 if nd else weight_decay, "lr_scale": scale}
        for (nd, scale), ps in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1]))
    ]


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """lr multiplier: linear 0 -> 1 over ``warmup`` steps, then cosine 1 -> ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def total_steps(trainer) -> int:
    """The schedule length: ``trainer.max_steps`` when set, else Lightning's estimate from the epochs."""
    if trainer.max_steps and trainer.max_steps > 0:
        return int(trainer.max_steps)
    return int(trainer.estimated_stepping_batches)


def adamw_warmup_cosine(module: L.LightningModule, named: list[tuple[str, torch.Tensor]],
                        lr_scale: dict[str, float] | None = None) -> dict:
    """Lightning's optimiser config from ``module.hparams`` (``lr``, ``min_lr``, ``warmup_steps``, ``weight_decay``,
    ``betas``): AdamW over ``param_groups`` and a per-step linear warm-up + cosine schedule, each group's multiplier
    scaled by its ``lr_scale``."""
    hp = module.hparams
    groups = param_groups(named, hp.weight_decay, lr_scale)
    opt = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas))
    total = total_steps(module.trainer)
    min_ratio = hp.min_lr / hp.lr if hp.lr > 0 else 0.0
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [(lambda s, sc=g["lr_scale"]: sc * warmup_cosine(s, hp.warmup_steps, total, min_ratio)) for g in groups]
    )
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


def check_sample_rate(data_rate: int | None, front_end: FrontEndConfig, where: str = "the dataset") -> None:
    """A clear error when batches arrive at another rate than the front end assumes (the fbank would be wrong)."""
    if data_rate and int(data_rate) != int(front_end.sample_rate):
        raise DatasetError(
            f"{where} holds audio at {data_rate} Hz but the model's front end expects {front_end.sample_rate} Hz: "
            f"prepare the shards at {front_end.sample_rate} Hz (`audiossl prep ...` without --keep-rate/--sample-rate)"
            f", or give the front end sample_rate: {data_rate}"
        )


def data_target_length(front_end: dict | None, datamodule, patch_size: int) -> dict:
    """``front_end`` with ``target_length`` chosen from the dataset's clip length (``AudioDataModule``'s
    ``default_target_frames``: its ``clip_seconds`` in frames, rounded up to whole patches) when the config leaves it
    unset; announced once. Without a datamodule the config's own default (1024 frames) applies."""
    fe = dict(front_end or {})
    if fe.get("target_length") is None and datamodule is not None and hasattr(datamodule, "default_target_frames"):
        centred = fe.get("spectrogram") == "mel_db_minmax"  # BAT's frames: 1 + N // hop (no window to fit)
        fe["target_length"] = datamodule.default_target_frames(fe.get("frame_shift", 10.0), patch_size,
                                                               0.0 if centred else fe.get("frame_length", 25.0))
        rank_zero_info(f"front end: target_length not set, using {fe['target_length']} frames "
                       f"({datamodule.clip_seconds:g} s clips, whole {patch_size}-frame patches)")
    return fe


def resolve_front_end(front_end: dict | None, data_stats: dict | None) -> FrontEndConfig:
    """Front-end config with ``mean``/``std`` left as None filled from the dataset stats, else AudioSet's."""
    fe = dict(front_end or {})
    for key, default in (("mean", AUDIOSET_MEAN), ("std", AUDIOSET_STD)):
        if fe.get(key) is None:
            fe[key] = float(data_stats[key]) if data_stats and data_stats.get(key) is not None else default
    return FrontEndConfig.from_dict(fe)


class PretrainModule(L.LightningModule):
    objective: str = "base"

    def __init__(
        self,
        encoder: dict,
        front_end: dict | None = None,
        lr: float = 5e-4,
        min_lr: float = 0.0,
        warmup_steps: int = 0,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        seed: int = 0,
        init_from: str | None = None,
        compile: bool = False,
    ):
        """
        Args:
            encoder: registry spec of the student encoder, e.g. ``{name: vit_base, block_style: post}``.
            front_end: ``FrontEndConfig`` fields; ``mean``/``std`` left unset take the dataset's statistics from its
                manifest (``audiossl stats``) when present, else the AudioSet constants; ``target_length`` left unset
                follows the dataset's clip length (``data.clip_seconds``, itself from the durations when unset).
            lr: peak learning rate (after warm-up).
            min_lr: final learning rate of the cosine decay.
            warmup_steps: linear warm-up length in optimizer steps.
            weight_decay: AdamW weight decay (not applied to biases, norms and tokens).
            betas: AdamW betas.
            seed: seeds the per-step masks and noise (together with the rank and the step).
            init_from: an audiossl checkpoint to start the student (and teacher) from.
            compile: ``torch.compile`` the student encoder.
        """
        super().__init__()
        self.save_hyperparameters()
        self.encoder = build_encoder(encoder)
        self.front_end = FrontEnd(resolve_front_end(front_end, None))
        self._front_end_spec = front_end
        self._compiled = False

    # --- set-up ------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        stats = getattr(dm, "stats", None) if dm is not None else None
        if self._trainer is not None and isinstance(getattr(self, "teacher", None), EMATeacher):
            from lightning.pytorch.strategies import FSDPStrategy

            if isinstance(self.trainer.strategy, FSDPStrategy):
                # FSDP flattens the student, the teacher and the decoder into shards whose boundaries differ, so the
                # element-wise EMA (teacher <- d * teacher + (1 - d) * student) would pair unrelated numbers.
                raise ValueError(
                    f"{type(self).__name__} keeps an EMA teacher, which FSDP would shard out of step with the student; "
                    "use --trainer.strategy ddp (a ViT-B or ViT-L with its teacher and AdamW state fits one GPU)"
                )
        spec = data_target_length(self._front_end_spec, dm, self.encoder.config.patch_size)
        self.front_end = FrontEnd(resolve_front_end(spec, stats))
        if dm is not None:
            check_sample_rate(getattr(dm, "sample_rate", None), self.front_end.config,
                              f"the dataset {getattr(dm, 'root', '')}".rstrip())
        if self.hparams.init_from and stage == "fit" and not getattr(self, "_initialised", False):
            self.load_init(self.hparams.init_from)
            self._initialised = True
        if self.hparams.compile and not self._compiled:
            # per-block compilation keeps state-dict keys unchanged and copes with varying token counts
            for blk in self.encoder.blocks:
                blk.compile(dynamic=True)
            self._compiled = True

    def load_init(self, path: str) -> None:
        """Start from an audiossl checkpoint: the student from its student, and our EMA teacher (if any) from its
        teacher when it has one (``teacher.model.*``: SSLAM stage 2 continues EAT's teacher, as fairseq's
        ``continue_once`` restores ``_ema``), else from its student, with a warning."""
        from audiossl.checkpoint import CheckpointError, encoder_from_checkpoint, read_checkpoint
        from audiossl.config_dict import config_differences
        from audiossl.models.encoder import WEIGHT_NEUTRAL

        src = read_checkpoint(path) if os.path.isfile(path) else path  # read once: student and teacher come from it
        try:
            enc, _ = encoder_from_checkpoint(src)
        except CheckpointError as e:
            raise CheckpointError(f"init_from {path}: {e}") from None
        diffs = config_differences(self.encoder.config.to_dict(), enc.config.to_dict(), WEIGHT_NEUTRAL)
        if diffs:
            raise CheckpointError(f"init_from {path}: the encoder settings differ (ours, checkpoint's): {diffs}")
        self.encoder.load_state_dict(enc.state_dict())
        teacher = getattr(self, "teacher", None)
        if not isinstance(teacher, EMATeacher):
            return
        source = enc
        if isinstance(src, dict) and any(k.startswith("teacher.model.") for k in src.get("state_dict", {})):
            try:
                source, _ = encoder_from_checkpoint(src, prefix="teacher.model.")
            except CheckpointError as e:
                raise CheckpointError(f"init_from {path}: its EMA teacher does not load: {e}") from None
        if source is enc:
            rank_zero_warn(f"init_from {path} holds no EMA teacher: the teacher starts as a copy of the student")
        teacher.model.load_state_dict(source.state_dict())

    # --- the step ----------------------------------------------------------------------------------------------
    def step_generator(self, batch_idx: int = 0) -> torch.Generator:
        """A generator seeded by (seed, rank, micro-step): resumed runs redraw exactly the same masks and noise."""
        accum = int(getattr(self.trainer, "accumulate_grad_batches", 1) or 1) if self._trainer is not None else 1
        micro = int(self.global_step) * accum + (batch_idx % accum)
        seed = (int(self.hparams.seed) * 1_000_003 + int(self.global_rank) * 7_919 + micro * 104_729) % (2**62)
        g = torch.Generator(device=self.device)
        g.manual_seed(seed)
        return g

    def features(self, audio: torch.Tensor, num_samples: torch.Tensor | None = None):
        """Waveforms ``[B, N]`` -> (normalised fbank ``[B, T, F]`` on the module's device in fp32, real frames ``[B]``
        or ``None`` when the front end does not mask padding)."""
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self.front_end(audio.float(), num_samples=num_samples, return_frames=True)

    def compute_loss(self, fbank: torch.Tensor, generator: torch.Generator,
                     num_frames: torch.Tensor | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        fbank, frames = self.features(batch["audio"], batch.get("num_samples"))
        out = self.compute_loss(fbank, self.step_generator(batch_idx), frames)
        B = fbank.shape[0]
        logs = {f"train/{k}": (v.detach() if torch.is_tensor(v) else v) for k, v in out.items() if k != "loss"}
        logs["train/loss"] = out["loss"].detach()
        self.log_dict(logs, on_step=True, on_epoch=False, prog_bar=False, batch_size=B)
        self.log("loss", out["loss"].detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False, batch_size=B)
        return out["loss"]

    def teacher_update(self, step: int) -> None:
        """One EMA step of the teacher (if any) towards the student; ``step`` is the update count (1-based)."""
        teacher = getattr(self, "teacher", None)
        if isinstance(teacher, EMATeacher):
            d = teacher.update(self.encoder, step)
            self.log("train/ema_decay", d, on_step=True, on_epoch=False, batch_size=1)

    def optimizer_step(self, *args, **kwargs) -> None:
        # The teacher follows the student once per optimizer step, right after it. Not in ``on_train_batch_end``:
        # Lightning calls that after every micro-batch (twice per step with ``accumulate_grad_batches 2``), and only
        # after the callbacks' ``on_train_batch_end``, where step checkpoints are saved — they would miss this update.
        super().optimizer_step(*args, **kwargs)
        # Lightning counts the step (global_step += 1) only after this hook returns: this is update global_step + 1.
        self.teacher_update(self.global_step + 1)

    # --- optimisation --------------------------------------------------------------------------------------------
    def trainable_named_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """Everything but the teacher."""
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("teacher.") and p.requires_grad]

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, self.trainable_named_parameters())

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=1)

    # --- checkpoints ---------------------------------------------------------------------------------------------
    def audiossl_metadata(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": "pretrain",
            "objective": self.objective,
            "encoder": self.encoder.config.to_dict(),
            "front_end": self.front_end.config.to_dict(),
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["audiossl"] = self.audiossl_metadata()

"""``PretrainModule``: what every self-supervised objective shares.

A subclass implements ``compute_loss(fbank, generator, num_frames=None) -> dict`` (a scalar ``loss`` plus anything to
log; ``num_frames [B]``: real frames per row, for the padding mask, ``None`` when nothing is masked) and, if it has a
teacher, ``teacher_update``. The base owns:

* the student encoder (built from a registry spec) and the device-side front end — waveforms arrive from the data
  workers, the fbank runs here, on the training device;
* the optimiser: AdamW, betas (0.9, 0.95), weight decay 0.05 except on biases, norms, and tokens (``decay_all_params``:
  on everything, as EAT/SSLAM actually ran); a linear warm-up and a cosine decay to ``min_lr`` over
  ``trainer.max_steps`` (``warmup_init``/``lr_floor``: fairseq's, AudioMAE's or I-JEPA's exact warm-up and floor;
  ``weight_decay_end``: I-JEPA's cosine weight decay; gradient clipping is the Trainer's ``gradient_clip_val``);
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
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from audiossl.data.stats import stats_mismatch
from audiossl.errors import DatasetError
from audiossl.frontend.features import AUDIOSET_MEAN, AUDIOSET_STD, FrontEnd, FrontEndConfig
from audiossl.models import build_encoder
from audiossl.objectives.ema import EMATeacher

CHECKPOINT_FORMAT = 1


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norm weights (all 1-D parameters) and token/position tables get no weight decay."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or leaf in ("prefix_tokens", "pos_table", "mask_token", "cls_token")


def param_groups(named: list[tuple[str, torch.Tensor]], weight_decay: float, lr_scale: dict | None = None,
                 decay_all: bool = False) -> list[dict]:
    """AdamW groups: (decay / no decay) x (optional per-parameter lr scale, e.g. layer decay).

    ``decay_all``: every parameter is decayed, biases, norms and tokens included -- what EAT/SSLAM (and data2vec 2.0)
    do as actually run: fairseq's composite optimiser only applies a ``weight_decay_scale: 0`` override under a
    condition its Adam config never meets, so their intended exemptions are a no-op (and the CLS was never exempt)."""
    groups: dict[tuple[bool, float], list] = {}
    for n, p in named:
        if not p.requires_grad:
            continue
        scale = (lr_scale or {}).get(n, 1.0)
        groups.setdefault((False if decay_all else no_decay(n, p), scale), []).append(p)
    return [
        {"params": ps, "weight_decay": 0.0 if nd else weight_decay, "lr_scale": scale, "decayed": not nd}
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


LR_FLOORS = ("scaled", "absolute")
WARMUP_INITS = ("one_step", "floor", "zero")
LR_SCHEDULES = ("cosine", "step")


def check_schedule_options(lr_floor: str = "scaled", warmup_init="one_step", lr_schedule: str = "cosine",
                           optimizer: str = "adamw") -> None:
    """A clear error for a misspelt schedule or optimiser option (before any training starts)."""
    from audiossl.errors import ConfigError

    if lr_floor not in LR_FLOORS:
        raise ConfigError(f"lr_floor must be one of {LR_FLOORS}, got {lr_floor!r}")
    if not (warmup_init in WARMUP_INITS or (isinstance(warmup_init, (int, float)) and not isinstance(warmup_init, bool)
                                            and 0.0 <= float(warmup_init) <= 1.0)):
        raise ConfigError(f"warmup_init must be one of {WARMUP_INITS} or a fraction of the peak lr in [0, 1], "
                          f"got {warmup_init!r}")
    if lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")


def scheduled_lr(step: int, peak: float, floor: float, warmup: float, total: int, warmup_init="one_step",
                 schedule: str = "cosine", milestones: tuple = (), gamma: float = 0.1, quantum: int = 1) -> float:
    """The learning rate of optimizer step ``step`` (0-based) for one parameter group.

    Warm-up (``step < warmup``), linear towards ``peak``, from where ``warmup_init`` says:
      * ``one_step`` (audiossl's original): ``peak * (step + 1) / warmup`` -- the first step already moves;
      * ``floor`` (fairseq ``cosine``: ``warmup_init_lr = min_lr``): ``floor + (peak - floor) * step / warmup``;
      * ``zero`` (AudioMAE, AST): ``peak * step / warmup`` -- the first step runs at lr 0;
      * a float ``r`` (I-JEPA ``start_lr / lr``): ``r peak + (1 - r) peak (step + 1) / warmup``.
      ``quantum`` > 1 holds the warm-up lr for ``quantum`` steps at a time (AST: every 50 steps).
    Then ``schedule``:
      * ``cosine``: ``floor + (peak - floor) (1 + cos(pi t)) / 2`` with ``t = (step - warmup) / (total - warmup)``;
      * ``step``: ``peak * gamma ** k``, ``k`` the number of ``milestones`` (steps) already reached (MultiStepLR).
    """
    if warmup > 0 and step < warmup:
        if warmup_init == "one_step":
            return peak * (step + 1) / warmup
        s = (step // quantum) * quantum if quantum > 1 else step
        if warmup_init == "floor":
            return floor + (peak - floor) * s / warmup
        if warmup_init == "zero":
            return peak * s / warmup
        r = float(warmup_init)
        return r * peak + (1.0 - r) * peak * (s + 1) / warmup
    if schedule == "step":
        return peak * gamma ** sum(1 for m in milestones if step >= m)
    if total <= warmup:
        return peak
    t = min(1.0, (step - warmup) / max(1.0, total - warmup))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def group_floor(peak: float, min_lr: float, scale: float, lr_floor: str) -> float:
    """The floor of a group's cosine: ``min_lr * scale`` (``scaled``: the whole curve scales with the group), or
    fairseq's composite optimiser (``absolute``): every lr-scale group has its own scheduler whose floor is the
    unscaled ``min_lr``, lowered to the group's peak when the peak is below it (a constant lr then)."""
    return min(min_lr, peak) if lr_floor == "absolute" else min_lr * scale


def total_steps(trainer) -> int:
    """The schedule length: ``trainer.max_steps`` when set, else Lightning's estimate from the epochs."""
    if trainer.max_steps and trainer.max_steps > 0:
        return int(trainer.max_steps)
    return int(trainer.estimated_stepping_batches)


def steps_per_epoch(trainer) -> float:
    """Optimizer steps per training epoch (for schedules given in epochs: AudioMAE's warm-up, AST's lr steps)."""
    from audiossl.errors import ConfigError

    if getattr(trainer, "train_dataloader", None) is None and hasattr(trainer, "fit_loop"):
        trainer.fit_loop.setup_data()  # as Lightning's estimated_stepping_batches does: the loader's length is needed
    n = trainer.num_training_batches
    if not n or n == float("inf"):
        raise ConfigError("a schedule given in epochs needs a training loader with a length")
    return n / max(1, int(getattr(trainer, "accumulate_grad_batches", 1) or 1))


OPTIMIZERS = ("adamw", "adam")


def adamw_warmup_cosine(module: L.LightningModule, named: list[tuple[str, torch.Tensor]],
                        lr_scale: dict[str, float] | None = None) -> dict:
    """Lightning's optimiser config from ``module.hparams``: ``lr``, ``min_lr``, ``warmup_steps``, ``weight_decay``,
    ``betas`` and, when the module has them, ``decay_all_params``, ``lr_floor``, ``warmup_init``, ``optimizer``
    (``adamw``: decoupled decay; ``adam``: PyTorch Adam, decay added to the gradient, as AST), ``warmup_epochs``,
    ``lr_schedule``/``lr_step_epochs``/``lr_step_gamma``, ``warmup_quantum``. Groups from ``param_groups``, each with
    its own per-step schedule (``scheduled_lr``) from its peak ``lr * lr_scale``."""
    hp = module.hparams
    get = lambda k, d=None: hp.get(k, d) if hasattr(hp, "get") else getattr(hp, k, d)  # noqa: E731
    groups = param_groups(named, hp.weight_decay, lr_scale, decay_all=bool(get("decay_all_params", False)))
    kind = get("optimizer", "adamw")
    check_schedule_options(get("lr_floor", "scaled"), get("warmup_init", "one_step"), get("lr_schedule", "cosine"),
                           kind)
    cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
    opt = cls(groups, lr=hp.lr, betas=tuple(hp.betas))
    total = total_steps(module.trainer)
    epoch_steps = None
    if get("warmup_epochs") is not None or (get("lr_schedule", "cosine") == "step" and get("lr_step_epochs")):
        epoch_steps = steps_per_epoch(module.trainer)
    warmup = hp.warmup_steps if get("warmup_epochs") is None else float(get("warmup_epochs")) * epoch_steps
    milestones = tuple(round(e * epoch_steps) for e in (get("lr_step_epochs") or ())) if epoch_steps else ()
    floor_kind, init = get("lr_floor", "scaled"), get("warmup_init", "one_step")
    base = hp.lr if hp.lr > 0 else 1.0

    def multiplier(scale: float):
        peak = hp.lr * scale
        floor = group_floor(peak, hp.min_lr, scale, floor_kind)
        return lambda s: scheduled_lr(s, peak, floor, warmup, total, init, get("lr_schedule", "cosine"), milestones,
                                      float(get("lr_step_gamma", 0.1)), int(get("warmup_quantum", 1))) / base

    sched = torch.optim.lr_scheduler.LambdaLR(opt, [multiplier(g["lr_scale"]) for g in groups])
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


def cosine_weight_decay(step: int, total: int, start: float, end: float) -> float:
    """I-JEPA's ``CosineWDSchedule``: weight decay from ``start`` to ``end`` along a half cosine; ``step`` counts
    from 1 as I-JEPA steps its scheduler before each update."""
    t = min(1.0, step / max(1, total))
    wd = end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))
    return max(end, wd) if end <= start else min(end, wd)


def check_sample_rate(data_rate: int | None, front_end: FrontEndConfig, where: str = "the dataset") -> None:
    """A clear error when batches arrive at another rate than the front end assumes (the fbank would be wrong)."""
    if data_rate and int(data_rate) != int(front_end.sample_rate):
        raise DatasetError(
            f"{where} holds audio at {data_rate} Hz but the model's front end expects {front_end.sample_rate} Hz: "
            f"prepare the shards at {front_end.sample_rate} Hz (`audiossl prep ...` without --keep-rate/--sample-rate)"
            f", or give the front end sample_rate: {data_rate}"
        )


def labelled_datamodule(module, needs: str):
    """The trainer's datamodule of a fine-tuning or probing module, checked to hold labels (both read the label space
    from it); ``needs`` names the job in the error."""
    dm = module.trainer.datamodule
    if dm is None:
        raise RuntimeError(f"{type(module).__name__} needs an AudioDataModule (it reads the label space from it)")
    if dm.num_classes == 0:
        raise DatasetError(f"{dm.root} has no labels (an unlabelled, pretraining-only dataset); {needs} needs labelled "
                           "data: prepare it with labels (e.g. a CSV with a labels column)")
    return dm


def data_target_length(front_end: dict | None, datamodule, patch_size: int) -> dict:
    """``front_end`` with ``target_length`` chosen from the dataset's clip length (``AudioDataModule``'s
    ``default_target_frames``: its ``clip_seconds`` in frames, rounded up to whole patches) when the config leaves it
    unset; announced once. Without a datamodule the config's own default (1024 frames) applies."""
    fe = dict(front_end or {})
    if fe.get("target_length") is None and datamodule is not None and hasattr(datamodule, "default_target_frames"):
        typed = FrontEndConfig.from_dict(fe)  # dotted command-line overrides arrive as text
        centred = typed.spectrogram == "mel_db_minmax"  # BAT's frames: 1 + N // hop (no window to fit)
        fe["target_length"] = datamodule.default_target_frames(typed.frame_shift, patch_size,
                                                               0.0 if centred else typed.frame_length)
        rank_zero_info(f"front end: target_length not set, using {fe['target_length']} frames "
                       f"({datamodule.clip_seconds:g} s clips, whole {patch_size}-frame patches)")
    return fe


def resolve_front_end(front_end: dict | None, data_stats: dict | None) -> FrontEndConfig:
    """Front-end config with ``mean``/``std`` left as None filled from the dataset stats, else AudioSet's."""
    fe = dict(front_end or {})
    used = False
    for key, default in (("mean", AUDIOSET_MEAN), ("std", AUDIOSET_STD)):
        if fe.get(key) is None:
            used |= bool(data_stats and data_stats.get(key) is not None)
            fe[key] = float(data_stats[key]) if data_stats and data_stats.get(key) is not None else default
    config = FrontEndConfig.from_dict(fe)
    if used and (differ := stats_mismatch(data_stats, config)):
        rank_zero_warn(f"the dataset's statistics were measured with another front end ({', '.join(differ)}: stats/"
                       "this run); the features are normalised slightly off. Remeasure with `audiossl stats DIR "
                       "--config THIS_CONFIG.yaml`")
    return config


def warn_front_end_override(front_end, init_fe: dict, init_from, pinned: dict, data_stats: dict | None) -> None:
    """Warn when the normalisation about to be used is not the one the ``init_from`` encoder was trained with,
    naming both and where ours came from (the dataset's ``audiossl stats``, or the config)."""
    ours = (float(front_end.mean), float(front_end.std))
    theirs = (float(init_fe["mean"]), float(init_fe["std"]))
    if all(abs(a - b) <= 1e-6 * max(1.0, abs(b)) for a, b in zip(ours, theirs)):
        return
    unpinned = pinned.get("mean") is None or pinned.get("std") is None
    source = "the dataset's statistics (audiossl stats)" if unpinned and data_stats else "the config's front_end"
    rank_zero_warn(
        f"normalising with mean {ours[0]:.4f}, std {ours[1]:.4f} from {source}, but init_from {init_from} was trained "
        f"with mean {theirs[0]:.4f}, std {theirs[1]:.4f}; its encoder sees shifted inputs. Pin front_end.mean/std "
        f"(the AudioSet recipes pin {-4.268} / {4.569}) to choose"
    )


class SeededSteps:
    """The per-step random generator and the feature call that pretraining, fine-tuning and probing share (a mixin
    for LightningModules with a ``front_end`` and ``hparams.seed``)."""

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


class PretrainModule(SeededSteps, L.LightningModule):
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
        decay_all_params: bool = False,
        lr_floor: str = "scaled",
        warmup_init: str | float = "one_step",
        weight_decay_end: float | None = None,
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
            decay_all_params: weight decay on every parameter (biases, norms, tokens too): EAT/SSLAM as actually
                run (their exemptions are a no-op in fairseq's composite optimiser); default: the intended exemptions.
            lr_floor: ``scaled`` or ``absolute`` (fairseq: each lr-scale group's cosine ends at the unscaled
                ``min_lr``); the same without per-group lr scales, as in pretraining.
            warmup_init: where the warm-up starts (``scheduled_lr``): ``one_step`` (ours), ``floor`` (fairseq: the
                first update runs at ``min_lr``), ``zero`` (AudioMAE) or a fraction of the peak (I-JEPA 0.2).
            weight_decay_end: cosine weight-decay schedule from ``weight_decay`` to this value over the run
                (I-JEPA 0.04 -> 0.4); ``None``: constant.
        """
        super().__init__()
        check_schedule_options(lr_floor, warmup_init)
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
        self._data_stats = stats
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
        """Continue another audiossl pretraining checkpoint, as fairseq's ``continue_once`` + ``reset_optimizer``
        does for SSLAM stage 2 (strict load of EAT's model, ``_ema`` restored): the student from its student, our EMA
        teacher (if any) from its teacher (``teacher.model.*``; else from its student, with a warning), and every
        other entry of ours that the checkpoint holds with the same name and shape -- the decoder -- from it (what it
        lacks starts fresh, listed in a warning). Only the optimizer, the lr schedule and the EMA counter restart.
        An exported/converted model directory gives the encoder only (``audiossl convert eat --pretraining`` writes a
        full pretraining checkpoint from a fairseq file)."""
        from audiossl.hub.reader import CheckpointError, encoder_from_checkpoint, read_checkpoint
        from audiossl.config_dict import config_differences
        from audiossl.models.encoder import WEIGHT_NEUTRAL

        src = read_checkpoint(path) if os.path.isfile(path) else path  # read once: student and teacher come from it
        try:
            enc, init_fe = encoder_from_checkpoint(src)
        except CheckpointError as e:
            raise CheckpointError(f"init_from {path}: {e}") from None
        diffs = config_differences(self.encoder.config.to_dict(), enc.config.to_dict(), WEIGHT_NEUTRAL)
        if diffs:
            raise CheckpointError(f"init_from {path}: the encoder settings differ (ours, checkpoint's): {diffs}")
        self.encoder.load_state_dict(enc.state_dict())
        warn_front_end_override(self.front_end.config, init_fe.to_dict(), path, dict(self._front_end_spec or {}),
                                getattr(self, "_data_stats", None))
        self._load_init_rest(path, src)
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

    def _load_init_rest(self, path: str, src) -> None:
        """Everything but the student and the teacher (the decoder, a predictor, ...) from ``src`` where it has the
        same entry with the same shape; a warning lists what starts fresh."""
        theirs = src.get("state_dict", {}) if isinstance(src, dict) else {}
        theirs = {k.replace("_orig_mod.", ""): v for k, v in theirs.items()}
        fresh = []
        with torch.no_grad():
            for k, v in self.state_dict().items():
                if k.startswith(("encoder.", "teacher.")):
                    continue
                w = theirs.get(k)
                if torch.is_tensor(w) and tuple(w.shape) == tuple(v.shape):
                    v.copy_(w)
                else:
                    fresh.append(k + ("" if w is None else f" (checkpoint {tuple(w.shape)}, ours {tuple(v.shape)})"))
        if fresh:
            shown = ", ".join(fresh[:6]) + (f", ... ({len(fresh) - 6} more)" if len(fresh) > 6 else "")
            rank_zero_warn(f"init_from {path}: {len(fresh)} entries besides the encoder start fresh (the checkpoint "
                           f"does not hold them with this shape): {shown}")

    # --- the step ----------------------------------------------------------------------------------------------
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
        end = self.hparams.get("weight_decay_end")
        if end is not None:  # I-JEPA steps its weight-decay schedule before each update, counting from 1
            wd = cosine_weight_decay(self.global_step + 1, total_steps(self.trainer), self.hparams.weight_decay, end)
            for g in optimizer.param_groups:
                if g.get("decayed", True):
                    g["weight_decay"] = wd
        if self.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=1)
            if end is not None:
                self.log("train/weight_decay", max(g["weight_decay"] for g in optimizer.param_groups), on_step=True,
                         on_epoch=False, batch_size=1)

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

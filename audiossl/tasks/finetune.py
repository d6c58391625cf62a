"""``FinetuneModule``: a pretrained encoder turned into a classifier, with the EAT, SSLAM, AudioMAE and AST recipes.

Per step, on the training device: waveforms -> (roll + gain) -> [AST-style pair mixup of waveforms] -> fbank +
pad/crop + normalise -> [EAT-style batch mixup] -> SpecAugment -> encoder (drop path, [patch dropping]) -> pooled token
-> LayerNorm -> Linear -> loss.

* Head: CLS (or mean, or the prefix tokens' mean) -> LayerNorm -> Linear (EAT's ``fc_norm`` + ``head``; trunc-normal
  std ``head_init_std`` (EAT 0.02, AudioMAE 2e-5; ``None``: PyTorch's default, AST's new head), zero bias).
  ``final_norm: false`` removes a pre-LN encoder's final LayerNorm (AudioMAE fine-tunes with mean pooling and
  ``fc_norm`` only: ``del self.norm``).
* Loss from the data: multi-label -> BCE with logits, summed and divided by the number of positive labels in the
  batch (EAT's ``sample_size = labels.sum()``) or averaged over all entries (``bce_reduction: mean``, AudioMAE/AST's
  ``BCEWithLogitsLoss()``); single-label -> cross-entropy with label smoothing, or soft-target cross-entropy when
  mixup is on (targets not smoothed, as EAT; ``smoothing_under_mixup`` smooths them as timm's Mixup does).
* Mixup: ``mixup_style: batch`` (EAT: one Beta(a, a) per batch on normalised spectrograms, partner = flipped batch,
  applied with ``mixup_prob``) or ``pair`` (AST/AudioMAE: on waveforms, each clip with probability ``mixup_prob``
  mixed with a random other clip, its own Beta(a, a)).
* SpecAugment: widths ``specaug_ratio`` x (mel bins, target frames) (EAT) or absolute ``specaug_freq``/
  ``specaug_time`` (AST/AudioMAE 48/192); ``specaug_before_norm``: the masked value is the log-mel zero, as AST and
  AudioMAE mask before normalising.
* ``patch_drop: [time, freq]``: AudioMAE's fine-tuning token dropping (whole time rows / frequency columns).
* Layer-wise lr decay: ``layer_decay_style: eat`` -- block ``i`` (0-based) of a depth-``L`` trunk gets
  ``decay ** (L - i)`` (the last block 0.65), everything else 1.0, as EAT's d2v-multi branch; ``beit`` (AudioMAE's
  ``param_groups_lrd``) also gives the embeddings (patch embedding, CLS, positions, pre-norm) ``decay ** (L + 1)``.
* Optimiser and schedule: AdamW (or ``optimizer: adam``, AST's coupled decay), linear warm-up (``warmup_steps`` or
  ``warmup_epochs``; ``warmup_init``/``warmup_quantum``), then cosine to ``min_lr`` (``lr_floor: absolute`` is
  fairseq's per-group floor, EAT/SSLAM) or ``lr_schedule: step`` (AST's MultiStepLR at ``lr_step_epochs``).
* ``freeze_encoder``: a linear probe; the encoder is frozen, in eval mode, and left out of the optimiser.
* Evaluation (fp32, outside autocast) gathers scores over all ranks and reports mAP, mAUC, d-prime and accuracy
  (``audiossl.tasks.metrics``); ``val/selection`` (mAP, or accuracy for single-label data) is what the ``best.ckpt``
  callback keeps the maximum of, and every validation is appended to ``RUN/val_history.jsonl``.
"""

from __future__ import annotations

import json
import os

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn

from audiossl.frontend.augment import mix_pairs, mixup, roll_and_gain, spec_augment
from audiossl.errors import ConfigError
from audiossl.frontend.features import FEATURE_KEYS, FrontEnd
from audiossl.objectives.masking import time_freq_keep
from audiossl.tasks.metrics import classification_metrics
from audiossl.models.classifier import AudioClassifier, HeadConfig, pool_tokens
from audiossl.models.encoder import AudioEncoder, EncoderConfig, encoder_config
from audiossl.objectives.base import (
    CHECKPOINT_FORMAT, SeededSteps, adamw_warmup_cosine, check_sample_rate, check_schedule_options, data_target_length,
    labelled_datamodule, resolve_front_end, warn_front_end_override,
)

LAYER_DECAY_STYLES = ("eat", "beit")
MIXUP_STYLES = ("batch", "pair")
BCE_REDUCTIONS = ("positives", "mean")
EMBEDDING_PARAMS = ("patch_embed.", "prefix_tokens", "pos_table", "pre_norm.")


def layer_decay_scales(encoder: AudioEncoder, decay: float, prefix: str = "model.encoder.",
                       style: str = "eat") -> dict[str, float]:
    """``{parameter name: lr scale}``: block ``i`` -> ``decay ** (depth - i)``; with ``style="beit"`` the embeddings
    (patch embedding, prefix tokens, position table, pre-norm: BEiT's layer 0) -> ``decay ** (depth + 1)``; every
    other parameter (final norm, head) -> 1.0 (left out of the dict)."""
    if style not in LAYER_DECAY_STYLES:
        raise ConfigError(f"layer_decay_style must be one of {LAYER_DECAY_STYLES}, got {style!r}")
    depth = len(encoder.blocks)
    scales = {}
    for name, _ in encoder.named_parameters():
        if name.startswith("blocks."):
            i = int(name.split(".")[1])
            scales[prefix + name] = decay ** (depth - i)
        elif style == "beit" and name.startswith(EMBEDDING_PARAMS):
            scales[prefix + name] = decay ** (depth + 1)
    return scales


def gather_strings(module: L.LightningModule, items: list[str]) -> list[str]:
    """All-gather a list of strings of any length per rank (e.g. the sample keys); concatenated in rank order."""
    if module.trainer is None or module.trainer.world_size <= 1:
        return list(items)
    parts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, list(items))
    return [k for part in parts for k in part]


def gather_variable(module: L.LightningModule, x: torch.Tensor) -> torch.Tensor:
    """All-gather a ``[n_rank, ...]`` tensor whose first dimension differs between ranks; concatenated in rank order."""
    if module.trainer is None or module.trainer.world_size <= 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = module.all_gather(n).flatten().tolist()
    pad = max(sizes) - x.shape[0]
    if pad:
        x = torch.cat([x, x.new_zeros((pad,) + tuple(x.shape[1:]))])
    g = module.all_gather(x)  # [world, max, ...]
    return torch.cat([g[r, : sizes[r]] for r in range(len(sizes))])


class FinetuneModule(SeededSteps, L.LightningModule):
    def __init__(
        self,
        encoder: dict | None = None,
        init_from: str | None = None,
        front_end: dict | None = None,
        pool: str = "cls",
        lr: float = 5e-5,
        min_lr: float = 1e-6,
        warmup_steps: int = 4000,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        layer_decay: float = 0.65,
        drop_path: float = 0.1,
        freeze_encoder: bool = False,
        mixup: float = 0.8,
        mixup_prob: float = 0.9,
        specaug_ratio: float = 0.2,
        roll: bool = True,
        label_smoothing: float = 0.0,
        seed: int = 0,
        decay_all_params: bool = False,
        lr_floor: str = "scaled",
        warmup_init: str | float = "one_step",
        warmup_epochs: float | None = None,
        warmup_quantum: int = 1,
        optimizer: str = "adamw",
        lr_schedule: str = "cosine",
        lr_step_epochs: list[float] | None = None,
        lr_step_gamma: float = 0.5,
        layer_decay_style: str = "eat",
        final_norm: bool | None = None,
        head_init_std: float | None = 0.02,
        patch_drop: tuple[float, float] = (0.0, 0.0),
        mixup_style: str = "batch",
        smoothing_under_mixup: bool = False,
        specaug_freq: float | None = None,
        specaug_time: float | None = None,
        specaug_before_norm: bool = False,
        bce_reduction: str = "positives",
        roll_shift: bool = True,
    ):
        """
        Args:
            encoder: encoder spec (``{name: vit_base, block_style: post}``); with ``init_from`` the checkpoint's encoder
                config is used and this may be left out (``drop_path`` still applies).
            init_from: an audiossl pretraining (or fine-tuning) checkpoint whose (student) encoder starts the model.
            front_end: ``FrontEndConfig`` fields; unset ``mean``/``std`` come from the dataset's ``audiossl stats``,
                else the ``init_from`` checkpoint, else AudioSet's (a warning names both when the dataset's override
                the checkpoint's). ``target_length``: 1024 (AudioSet), 512 (ESC-50); left unset, it follows the
                dataset's clip length (``data.clip_seconds``). The fields that shape the features
                (``features.FEATURE_KEYS``: mel bins, frame shift and length, window, spectrogram, ...) default to the
                ``init_from`` checkpoint's (``waveform_scale`` only when its mean/std are used too).
            pool: ``cls`` (EAT), ``mean`` over patch tokens (AudioMAE) or ``prefix`` (AST: mean of CLS + distillation).
            lr/min_lr/warmup_steps/weight_decay/betas: optimiser with linear warm-up and cosine decay to ``min_lr``.
            layer_decay: layer-wise lr decay (1.0 disables it); ``layer_decay_style``: ``eat`` or ``beit``.
            drop_path: stochastic depth of the encoder (0.1).
            freeze_encoder: linear probing: train only the head.
            mixup: Beta(alpha, alpha) of mixup (0 disables it); ``mixup_style``: ``batch`` (EAT) or ``pair`` (AST).
            mixup_prob: probability that a batch (``batch``) or a clip (``pair``) is mixed.
            specaug_ratio: SpecAugment mask sizes as a fraction of the mel bins / target frames (0 disables it);
                ``specaug_freq``/``specaug_time``: absolute sizes instead (AST/AudioMAE: 48 / 192);
                ``specaug_before_norm``: masked bins hold the log-mel zero (AST, AudioMAE), not the normalised zero.
            roll: random circular shift + gain of the waveform; ``roll_shift: false`` keeps the gain only (AudioMAE's
                roll is a no-op: its offset is drawn from the length of a ``[1, N]`` tensor).
            label_smoothing: for single-label cross-entropy (ESC-50: 0.1); not applied under mixup (EAT) unless
                ``smoothing_under_mixup``.
            seed: seeds the per-step augmentation draws (with the rank and step).
            decay_all_params: weight decay on every parameter (EAT/SSLAM as run; AST's Adam decays everything).
            lr_floor: ``scaled`` (each group's cosine ends at ``min_lr * scale``) or ``absolute`` (fairseq, EAT/SSLAM:
                at ``min_lr``, and constant for groups whose peak is below it).
            warmup_init: ``one_step`` (ours), ``floor`` (fairseq), ``zero`` (AudioMAE/AST) or a fraction of the peak.
            warmup_epochs: warm-up length in epochs instead of ``warmup_steps`` (AudioMAE).
            warmup_quantum: hold the warm-up lr for this many steps at a time (AST: 50).
            optimizer: ``adamw`` (decoupled decay) or ``adam`` (PyTorch Adam: decay added to the gradient, AST).
            lr_schedule: ``cosine`` or ``step`` (``lr * lr_step_gamma ** k`` after the k-th of ``lr_step_epochs``).
            final_norm: override a pre-LN encoder's final LayerNorm (``false``: AudioMAE's global-pool fine-tuning;
                the checkpoint's ``norm`` weights are then dropped).
            head_init_std: trunc-normal std of the head's weights (EAT 0.02, AudioMAE 2e-5; ``null``: PyTorch's
                default ``nn.Linear`` init, AST's new head).
            patch_drop: fractions of time rows and frequency columns dropped while training (AudioMAE 0.2, 0.2).
            bce_reduction: multi-label loss normaliser: ``positives`` (EAT) or ``mean`` (AudioMAE, AST).
        """
        super().__init__()
        check_schedule_options(lr_floor, warmup_init, lr_schedule, optimizer)
        for name, value, allowed in (("layer_decay_style", layer_decay_style, LAYER_DECAY_STYLES),
                                     ("mixup_style", mixup_style, MIXUP_STYLES),
                                     ("bce_reduction", bce_reduction, BCE_REDUCTIONS)):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")
        if len(tuple(patch_drop)) != 2 or not all(0.0 <= float(p) < 1.0 for p in patch_drop):
            raise ConfigError(f"patch_drop must be [time fraction, freq fraction] in [0, 1), got {patch_drop!r}")
        if lr_schedule == "step" and not lr_step_epochs:
            raise ConfigError("lr_schedule: step needs lr_step_epochs (the epochs after which the lr is multiplied "
                              "by lr_step_gamma)")
        self.save_hyperparameters()
        if encoder is None and init_from is None:
            raise ValueError("give an encoder spec or init_from (a pretraining checkpoint)")
        self.model: AudioClassifier | None = None

    # --- building the classifier once the data is known -----------------------------------------------------------
    def _encoder_config(self) -> tuple[EncoderConfig, dict | None, AudioEncoder | None]:
        hp = self.hparams
        init_encoder, init_fe = None, None
        if hp.init_from:
            from audiossl.hub.reader import encoder_from_checkpoint

            init_encoder, init_fe = encoder_from_checkpoint(hp.init_from)
            cfg = init_encoder.config.to_dict()
        else:
            spec = dict(hp.encoder)
            name = spec.pop("name", "")
            cfg = encoder_config(name, **spec).to_dict() if name else EncoderConfig.from_dict(spec).to_dict()
        cfg["drop_path"] = hp.drop_path
        if hp.get("final_norm") is not None:
            cfg["final_norm"] = bool(hp.final_norm)
        return EncoderConfig.from_dict(cfg), (init_fe.to_dict() if init_fe is not None else None), init_encoder

    def build(self, num_classes: int, label_names: list[str], multi_label: bool, data_stats: dict | None,
              data_sample_rate: int | None = None, datamodule=None) -> None:
        hp = self.hparams
        enc_cfg, init_fe, init_encoder = self._encoder_config()
        fe = dict(hp.front_end or {})
        if init_fe:  # the features the encoder was pretrained on, unless the config says otherwise
            keys = set(FEATURE_KEYS)
            if data_stats or fe.get("mean") is not None or fe.get("std") is not None:
                keys.discard("waveform_scale")  # normalised by statistics of unscaled waveforms
            fe = {**{k: init_fe[k] for k in FEATURE_KEYS if k in keys and k in init_fe}, **fe}
        fe = data_target_length(fe, datamodule, enc_cfg.patch_size)
        stats = data_stats or ({"mean": init_fe["mean"], "std": init_fe["std"]} if init_fe else None)
        front_end = resolve_front_end(fe, stats)
        if init_fe is not None:
            warn_front_end_override(front_end, init_fe, hp.init_from, fe, data_stats)
        self.model = AudioClassifier(
            encoder=enc_cfg,
            head=HeadConfig(num_classes=num_classes, pool=hp.pool),
            front_end=front_end,
            label_names=label_names,
            multi_label=multi_label,
        )
        check_sample_rate(data_sample_rate, self.model.front_end.config)
        if init_encoder is not None:
            self.model.encoder.load_state_dict(self._init_weights(init_encoder))
        std = hp.get("head_init_std", 0.02)
        if std is None:  # PyTorch's own nn.Linear init (AST builds a fresh mlp_head this way)
            self.model.head.linear.reset_parameters()
        elif std != 0.02:
            nn.init.trunc_normal_(self.model.head.linear.weight, std=std)
            nn.init.zeros_(self.model.head.linear.bias)
        if hp.freeze_encoder:
            self.model.encoder.requires_grad_(False)

    def _init_weights(self, init_encoder: AudioEncoder) -> dict:
        """The checkpoint encoder's weights for ours: a final norm we removed (``final_norm: false``) is dropped; one
        we added where the checkpoint has none starts as LayerNorm(1, 0), with a warning."""
        sd = dict(init_encoder.state_dict())
        own = self.model.encoder.state_dict()
        for k in [k for k in sd if k.startswith("norm.") and k not in own]:
            del sd[k]
        added = [k for k in own if k.startswith("norm.") and k not in sd]
        if added:
            rank_zero_warn(f"init_from {self.hparams.init_from} has no final norm; final_norm: true adds a fresh one")
            sd.update({k: own[k] for k in added})
        return sd

    def setup(self, stage: str) -> None:
        if self.model is not None:
            return
        dm = labelled_datamodule(self, "fine-tuning")
        self.build(dm.num_classes, dm.label_names, dm.multi_label, dm.stats, dm.sample_rate, dm)

    @property
    def front_end(self) -> FrontEnd:
        return self.model.front_end

    # --- the step ------------------------------------------------------------------------------------------------
    def soft_targets(self, target: torch.Tensor) -> torch.Tensor:
        """Multi-hot stays; class indices -> one-hot, with label smoothing only under ``smoothing_under_mixup``
        (EAT's ``mixup_target`` leaves the targets unsmoothed; timm's Mixup smooths them)."""
        if self.model.multi_label:
            return target.float()
        C = self.model.head_config.num_classes
        eps = self.hparams.label_smoothing if self.hparams.get("smoothing_under_mixup", False) else 0.0
        return F.one_hot(target.long(), C).float() * (1 - eps) + eps / C

    def loss(self, logits: torch.Tensor, target: torch.Tensor, mixed: bool) -> torch.Tensor:
        if self.model.multi_label:
            if self.hparams.get("bce_reduction", "positives") == "mean":  # torch.nn.BCEWithLogitsLoss() (AST, AudioMAE)
                return F.binary_cross_entropy_with_logits(logits.float(), target)
            # EAT: BCE summed over the batch, divided by the number of positive labels (sample_size = labels.sum())
            return F.binary_cross_entropy_with_logits(logits.float(), target, reduction="sum") / target.sum().clamp_min(1.0)
        if mixed or target.dim() == 2:
            return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(logits.float(), target.long(), label_smoothing=self.hparams.label_smoothing)

    def specaug_sizes(self) -> tuple[float, float]:
        """(frequency, time) SpecAugment mask parameters: absolute sizes when given, else the ratio's."""
        hp, fe = self.hparams, self.front_end.config
        f = hp.get("specaug_freq") if hp.get("specaug_freq") is not None else fe.num_mel_bins * hp.specaug_ratio
        t = hp.get("specaug_time") if hp.get("specaug_time") is not None else fe.target_length * hp.specaug_ratio
        return float(f), float(t)

    def logits(self, x: torch.Tensor, frames: torch.Tensor | None, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Classifier logits ``[B, C]`` over all patches, or over the kept patches ``keep [B, K]`` (patch dropping)."""
        if keep is None:
            return self.model(x, frames)
        enc = self.model.encoder
        patches, valid = enc.embed_padded(x, frames)
        tokens = enc.forward_tokens(patches, keep=keep, valid=valid)
        v = None if valid is None else valid.gather(1, keep)
        return self.model.head(pool_tokens(tokens, self.model.pool, enc.num_prefix_tokens, v))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        g = self.step_generator(batch_idx)
        audio = batch["audio"]
        n = batch.get("num_samples")
        if hp.roll:
            audio = roll_and_gain(audio, g, n, shift=bool(hp.get("roll_shift", True)))
        target = batch["target"]
        mixed = False
        pair = hp.get("mixup_style", "batch") == "pair"
        if hp.mixup > 0 and pair:  # AST/AudioMAE: on the waveforms, a random partner per clip
            audio, target, lam = mix_pairs(audio, self.soft_targets(target), hp.mixup, hp.mixup_prob, g, n)
            mixed = bool((lam < 1.0).any())
        x, frames = self.features(audio, n)  # [B, T, F], [B] real frames
        if hp.mixup > 0 and not pair:
            x, target, lam = mixup(x, self.soft_targets(target), hp.mixup, hp.mixup_prob, g)
            mixed = lam < 1.0
            if mixed and frames is not None:  # a mixture holds audio wherever either of its clips does
                frames = torch.maximum(frames, frames.flip(0))
        freq, time = self.specaug_sizes()
        if freq > 0 or time > 0:
            fill = float(self.front_end.normalize(torch.zeros(()))) if hp.get("specaug_before_norm") else 0.0
            x = spec_augment(x, freq, time, g, fill)
        if hp.freeze_encoder:
            self.model.encoder.eval()
        keep = None
        t_drop, f_drop = (float(p) for p in hp.get("patch_drop", (0.0, 0.0)))
        if t_drop > 0 or f_drop > 0:
            enc = self.model.encoder
            grid = enc.grid_shape(x.shape[1])
            valid = enc.patch_valid(frames, grid)
            keep = time_freq_keep(x.shape[0], grid, t_drop, f_drop, g, x.device, valid)
        logits = self.logits(x, frames, keep)
        loss = self.loss(logits, target.float() if self.model.multi_label else target, mixed)
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True, batch_size=x.shape[0])
        return loss

    # --- evaluation ----------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._scores, self._targets, self._keys = [], [], []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # fp32 outside autocast, as ``audiossl evaluate`` scores: bf16 logits cost ~0.07 mAP points
        with torch.autocast(device_type=self.device.type, enabled=False):
            x, frames = self.features(batch["audio"], batch.get("num_samples"))
            logits = self.model(x.float(), frames).float()
        scores = torch.sigmoid(logits) if self.model.multi_label else torch.softmax(logits, -1)
        self._scores.append(scores)
        self._targets.append(batch["target"].float() if self.model.multi_label else batch["target"].long())
        self._keys.extend(batch["key"])

    def on_validation_epoch_end(self) -> None:
        distributed = self._trainer is not None and self.trainer.world_size > 1
        if not self._scores and not distributed:
            return
        # a rank may have had no evaluation sample (fewer samples than reading slots): it still joins the gathers
        C, dev = self.model.head_config.num_classes, self.device
        none = (torch.zeros(0, C, device=dev), torch.zeros(0, C, device=dev) if self.model.multi_label
                else torch.zeros(0, dtype=torch.long, device=dev))
        scores = gather_variable(self, torch.cat(self._scores) if self._scores else none[0])
        targets = gather_variable(self, torch.cat(self._targets) if self._targets else none[1])
        # the sample keys of the score rows, all ranks (the evaluation stream gives every sample to one rank once)
        self.eval_keys = gather_strings(self, self._keys)
        if len(set(self.eval_keys)) != len(self.eval_keys) or len(self.eval_keys) != scores.shape[0]:
            rank_zero_warn(f"evaluation gathered {scores.shape[0]} score rows for {len(self.eval_keys)} keys "
                           f"({len(set(self.eval_keys))} distinct): some sample was scored twice, so the metrics are "
                           "biased; check the evaluation data loader")
        if scores.shape[0] == 0:
            return
        m = classification_metrics(scores, targets)
        logged = {f"val/{k}": float(m[k]) for k in ("mAP", "mAUC", "d_prime", "accuracy")}
        logged["val/selection"] = logged["val/mAP"] if self.model.multi_label else logged["val/accuracy"]
        self.log_dict(logged, sync_dist=False, batch_size=1)
        self._record_validation(m, scores.shape[0])
        self._scores, self._targets, self._keys = [], [], []

    def _record_validation(self, m: dict, num_clips: int) -> None:
        """Append this validation to ``RUN/val_history.jsonl`` (rank 0; not during the sanity check): the record the
        recipes' test-selected ("best") summaries are computed from."""
        t = self._trainer
        root = getattr(t, "default_root_dir", None)
        if t is None or getattr(t, "sanity_checking", False) or not getattr(t, "is_global_zero", False) or not root:
            return
        row = {"step": int(self.global_step), "epoch": int(self.current_epoch), "num_clips": int(num_clips),
               **{k: (None if m[k] != m[k] else float(m[k])) for k in ("mAP", "mAUC", "d_prime", "accuracy")}}
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, "val_history.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")

    # --- optimisation --------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        named = [(f"model.{n}", p) for n, p in self.model.named_parameters() if p.requires_grad]
        scales = (layer_decay_scales(self.model.encoder, hp.layer_decay, style=hp.get("layer_decay_style", "eat"))
                  if hp.layer_decay < 1.0 else {})
        return adamw_warmup_cosine(self, named, scales)

    # --- checkpoints ---------------------------------------------------------------------------------------------
    def audiossl_metadata(self) -> dict:
        m = self.model
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": "classifier",
            "encoder": m.encoder.config.to_dict(),
            "front_end": m.front_end.config.to_dict(),
            "head": m.head_config.to_dict(),
            "label_names": list(m.label_names),
            "multi_label": bool(m.multi_label),
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["audiossl"] = self.audiossl_metadata()


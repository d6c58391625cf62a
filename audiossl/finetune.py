"""``FinetuneModule``: a pretrained encoder turned into a classifier, with the EAT fine-tuning recipe.

Per step, on the training device: waveforms -> (roll + gain) -> fbank + pad/crop + normalise -> mixup -> SpecAugment
-> encoder (drop path) -> pooled token -> LayerNorm -> Linear -> loss.

* Head: CLS (or mean) -> LayerNorm -> Linear (EAT's ``fc_norm`` + ``head``; trunc-normal std 0.02, zero bias).
* Loss from the data: multi-label -> BCE with logits summed and divided by the number of positive labels in the batch
  (EAT's ``sample_size = labels.sum()``); single-label -> cross-entropy with label smoothing (soft-target CE when
  mixup is on).
* Layer-wise lr decay, EAT's variant: block ``i`` (0-based) of a depth-``L`` trunk gets ``decay ** (L - i)`` (the last
  block 0.65); patch embedding, CLS, pre-norm, final norm and the head keep 1.0.
* ``freeze_encoder``: a linear probe; the encoder is frozen, in eval mode, and left out of the optimiser.
* Evaluation gathers scores over all ranks and reports mAP, mAUC, d-prime and accuracy (``audiossl.metrics``).
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn

from audiossl.augment import mixup, roll_and_gain, spec_augment
from audiossl.features import FrontEnd
from audiossl.metrics import classification_metrics
from audiossl.errors import DatasetError
from audiossl.models.classifier import AudioClassifier, HeadConfig
from audiossl.models.encoder import AudioEncoder, EncoderConfig, encoder_config
from audiossl.objectives.base import (
    CHECKPOINT_FORMAT, adamw_warmup_cosine, check_sample_rate, data_target_length, resolve_front_end,
)


def layer_decay_scales(encoder: AudioEncoder, decay: float, prefix: str = "model.encoder.") -> dict[str, float]:
    """``{parameter name: lr scale}``: block ``i`` -> ``decay ** (depth - i)``; every other parameter -> 1.0."""
    depth = len(encoder.blocks)
    scales = {}
    for name, _ in encoder.named_parameters():
        if name.startswith("blocks."):
            i = int(name.split(".")[1])
            scales[prefix + name] = decay ** (depth - i)
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


class FinetuneModule(L.LightningModule):
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
    ):
        """
        Args:
            encoder: encoder spec (``{name: vit_base, block_style: post}``); with ``init_from`` the checkpoint's encoder
                config is used and this may be left out (``drop_path`` still applies).
            init_from: an audiossl pretraining (or fine-tuning) checkpoint whose (student) encoder starts the model.
            front_end: ``FrontEndConfig`` fields; unset ``mean``/``std`` come from the dataset's ``audiossl stats``,
                else the ``init_from`` checkpoint, else AudioSet's. ``target_length``: 1024 (AudioSet), 512 (ESC-50);
                left unset, it follows the dataset's clip length (``data.clip_seconds``).
            pool: ``cls`` (EAT) or ``mean`` over patch tokens.
            lr/min_lr/warmup_steps/weight_decay/betas: AdamW with linear warm-up and cosine decay to ``min_lr``.
            layer_decay: EAT-style layer-wise lr decay (1.0 disables it).
            drop_path: stochastic depth of the encoder (0.1).
            freeze_encoder: linear probing: train only the head.
            mixup: Beta(alpha, alpha) of batch mixup (0 disables it).
            mixup_prob: probability that a batch is mixed.
            specaug_ratio: SpecAugment mask sizes as a fraction of the mel bins / target frames (0 disables it).
            roll: random circular shift + gain of the waveform.
            label_smoothing: for single-label cross-entropy (ESC-50: 0.1).
            seed: seeds the per-step augmentation draws (with the rank and step).
        """
        super().__init__()
        self.save_hyperparameters()
        if encoder is None and init_from is None:
            raise ValueError("give an encoder spec or init_from (a pretraining checkpoint)")
        self.model: AudioClassifier | None = None

    # --- building the classifier once the data is known -----------------------------------------------------------
    def _encoder_config(self) -> tuple[EncoderConfig, dict | None, AudioEncoder | None]:
        hp = self.hparams
        init_encoder, init_fe = None, None
        if hp.init_from:
            from audiossl.checkpoint import encoder_from_checkpoint

            init_encoder, init_fe = encoder_from_checkpoint(hp.init_from)
            cfg = init_encoder.config.to_dict()
        else:
            spec = dict(hp.encoder)
            name = spec.pop("name", "")
            cfg = encoder_config(name, **spec).to_dict() if name else EncoderConfig.from_dict(spec).to_dict()
        cfg["drop_path"] = hp.drop_path
        return EncoderConfig.from_dict(cfg), (init_fe.to_dict() if init_fe is not None else None), init_encoder

    def build(self, num_classes: int, label_names: list[str], multi_label: bool, data_stats: dict | None,
              data_sample_rate: int | None = None, datamodule=None) -> None:
        hp = self.hparams
        enc_cfg, init_fe, init_encoder = self._encoder_config()
        fe = dict(hp.front_end or {})
        if init_fe and init_fe.get("spectrogram", "kaldi") != "kaldi":  # BAT's front end: keep the encoder's features
            keep = ("spectrogram", "sample_rate", "num_mel_bins", "frame_length", "frame_shift", "top_db")
            fe = {**{k: init_fe[k] for k in keep if k in init_fe}, **fe}
        fe = data_target_length(fe, datamodule, enc_cfg.patch_size)
        stats = data_stats or ({"mean": init_fe["mean"], "std": init_fe["std"]} if init_fe else None)
        self.model = AudioClassifier(
            encoder=enc_cfg,
            head=HeadConfig(num_classes=num_classes, pool=hp.pool),
            front_end=resolve_front_end(fe, stats),
            label_names=label_names,
            multi_label=multi_label,
        )
        check_sample_rate(data_sample_rate, self.model.front_end.config)
        if init_encoder is not None:
            self.model.encoder.load_state_dict(init_encoder.state_dict())
        if hp.freeze_encoder:
            self.model.encoder.requires_grad_(False)

    def setup(self, stage: str) -> None:
        if self.model is not None:
            return
        dm = self.trainer.datamodule
        if dm is None:
            raise RuntimeError("FinetuneModule needs an AudioDataModule (it reads the label space from it)")
        if dm.num_classes == 0:
            raise DatasetError(f"{dm.root} has no labels (an unlabelled, pretraining-only dataset); fine-tuning needs "
                               "labelled data: prepare it with labels (e.g. a CSV with a labels column)")
        self.build(dm.num_classes, dm.label_names, dm.multi_label, dm.stats, dm.sample_rate, dm)

    @property
    def front_end(self) -> FrontEnd:
        return self.model.front_end

    # --- the step ------------------------------------------------------------------------------------------------
    def step_generator(self, batch_idx: int) -> torch.Generator:
        accum = int(getattr(self.trainer, "accumulate_grad_batches", 1) or 1)
        micro = int(self.global_step) * accum + batch_idx % accum
        g = torch.Generator(device=self.device)
        g.manual_seed((int(self.hparams.seed) * 1_000_003 + int(self.global_rank) * 7_919 + micro * 104_729) % (2**62))
        return g

    def features(self, audio: torch.Tensor, num_samples: torch.Tensor | None = None):
        """Waveforms ``[B, N]`` -> (normalised fbank ``[B, T, F]`` in fp32, real frames ``[B]`` or ``None``)."""
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self.front_end(audio.float(), num_samples=num_samples, return_frames=True)

    def soft_targets(self, target: torch.Tensor) -> torch.Tensor:
        """Multi-hot stays; class indices -> one-hot with label smoothing (for mixup's soft cross-entropy)."""
        if self.model.multi_label:
            return target.float()
        C = self.model.head_config.num_classes
        eps = self.hparams.label_smoothing
        return F.one_hot(target.long(), C).float() * (1 - eps) + eps / C

    def loss(self, logits: torch.Tensor, target: torch.Tensor, mixed: bool) -> torch.Tensor:
        if self.model.multi_label:
            # EAT: BCE summed over the batch, divided by the number of positive labels (sample_size = labels.sum())
            return F.binary_cross_entropy_with_logits(logits.float(), target, reduction="sum") / target.sum().clamp_min(1.0)
        if mixed or target.dim() == 2:
            return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(logits.float(), target.long(), label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        g = self.step_generator(batch_idx)
        audio = batch["audio"]
        if hp.roll:
            audio = roll_and_gain(audio, g, batch.get("num_samples"))
        x, frames = self.features(audio, batch.get("num_samples"))  # [B, T, F], [B] real frames
        target = batch["target"]
        mixed = False
        if hp.mixup > 0:
            x, target, lam = mixup(x, self.soft_targets(target), hp.mixup, hp.mixup_prob, g)
            mixed = lam < 1.0
            if mixed and frames is not None:  # a mixture holds audio wherever either of its clips does
                frames = torch.maximum(frames, frames.flip(0))
        if hp.specaug_ratio > 0:
            fe = self.front_end.config
            x = spec_augment(x, fe.num_mel_bins * hp.specaug_ratio, fe.target_length * hp.specaug_ratio, g)
        if hp.freeze_encoder:
            self.model.encoder.eval()
        logits = self.model(x, frames)
        loss = self.loss(logits, target.float() if self.model.multi_label else target, mixed)
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True, batch_size=x.shape[0])
        return loss

    # --- evaluation ----------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._scores, self._targets, self._keys = [], [], []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.model(*self.features(batch["audio"], batch.get("num_samples")))
        scores = torch.sigmoid(logits.float()) if self.model.multi_label else torch.softmax(logits.float(), -1)
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
        self.log_dict({f"val/{k}": float(m[k]) for k in ("mAP", "mAUC", "d_prime", "accuracy")}, sync_dist=False,
                      batch_size=1)
        self._scores, self._targets, self._keys = [], [], []

    # --- optimisation --------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        named = [(f"model.{n}", p) for n, p in self.model.named_parameters() if p.requires_grad]
        scales = layer_decay_scales(self.model.encoder, hp.layer_decay) if hp.layer_decay < 1.0 else {}
        return adamw_warmup_cosine(self, named, scales)

    # --- checkpoints ---------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        m = self.model
        checkpoint["audiossl"] = {
            "format": CHECKPOINT_FORMAT,
            "kind": "classifier",
            "encoder": m.encoder.config.to_dict(),
            "front_end": m.front_end.config.to_dict(),
            "head": m.head_config.to_dict(),
            "label_names": list(m.label_names),
            "multi_label": bool(m.multi_label),
        }

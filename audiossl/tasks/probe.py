"""``ProbeModule`` (``audiossl probe``): a probe head trained on a frozen encoder, BAT's recipes
(``reference/methods-bat.md`` §4).

    audiossl probe --config configs/probe/as20k_cgp.yaml --model.init_from PRETRAIN.ckpt --data.root DIR
    audiossl probe --config configs/probe/tiny.yaml --model.init_from CKPT --model.probe linear --data.root DIR

Per step: waveforms -> (optional circular roll) -> the checkpoint's front end -> frozen encoder in eval mode under
``no_grad`` (no activations kept for a backward pass; every block's tokens kept for multi-block probes) -> probe head
-> loss. Any audiossl encoder works: pretraining checkpoints of every objective (student, or ``encoder_weights:
teacher`` for the EMA teacher), fine-tuned classifiers, and exported or converted model directories (BEATs, BAT, EAT,
...).

* ``probe``: ``cgp`` (Convex Gated Probing), ``linear`` (BAT's: final CLS -> LayerNorm -> dropout -> Linear),
  ``lcgp`` or ``h2t`` (``audiossl.models.probe_heads``).
* Loss: multi-label data -> the asymmetric loss (gamma- 1, gamma+ 0, clip 0; ``loss: bce`` for BCE), single-label ->
  cross-entropy; ``h2t`` adds ``lasso_weight`` x its group-lasso penalty.
* Optimiser: AdamW (0.9, 0.999), weight decay on the weight matrices only (not on biases, norms, the CGP prototypes
  and layer logits, as BAT), linear warm-up and cosine to ``min_lr``.
* The checkpoint is an ordinary classifier checkpoint (``kind: classifier``, the head config names the probe):
  ``audiossl export``, ``predict``, ``evaluate`` and ONNX take it as they take a fine-tuned model.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from audiossl.frontend.features import FrontEnd
from audiossl.tasks.finetune import gather_strings, gather_variable
from audiossl.tasks.metrics import classification_metrics
from audiossl.models.classifier import AudioClassifier, HeadConfig
from audiossl.models.encoder import AudioEncoder, EncoderConfig, build_encoder
from audiossl.objectives.base import (
    CHECKPOINT_FORMAT, SeededSteps, check_sample_rate, data_target_length, labelled_datamodule, resolve_front_end,
    total_steps, warmup_cosine,
)
from audiossl.models.probe_heads import NO_DECAY
from audiossl.tasks.asymmetric_loss import asymmetric_loss

PROBE_KINDS = ("cgp", "linear", "lcgp", "h2t")


def roll_waveforms(wave: torch.Tensor, generator: torch.Generator | None,
                   num_samples: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, N]``: each row's real samples circularly shifted by a uniform random offset (padding stays at the end);
    BAT's training-time ``torch.roll`` of the clip, without a gain."""
    B, N = wave.shape
    n = torch.full((B,), N, device=wave.device) if num_samples is None else num_samples.to(wave.device).clamp(1, N)
    shift = (torch.rand(B, generator=generator, device=wave.device) * n).long()
    j = torch.arange(N, device=wave.device)[None, :]
    return torch.gather(wave, 1, torch.where(j < n[:, None], (j - shift[:, None]) % n[:, None], j))


def probe_param_groups(named: list[tuple[str, torch.Tensor]], weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight matrices decay; biases, norms, prototypes and layer logits do not (BAT's
    ``get_optimizer``)."""
    decay, keep = [], []
    for n, p in named:
        if p.requires_grad:
            (keep if p.ndim <= 1 or n.rsplit(".", 1)[-1] in NO_DECAY else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


class ProbeModule(SeededSteps, L.LightningModule):
    def __init__(
        self,
        init_from: str | None = None,
        encoder: dict | None = None,
        encoder_weights: str = "student",
        front_end: dict | None = None,
        probe: str = "cgp",
        pool: str | None = None,
        num_prototypes: int = 10_000,
        dropout: float = 0.2,
        loss: str = "auto",
        asl_gamma_neg: float = 1.0,
        asl_gamma_pos: float = 0.0,
        asl_clip: float = 0.0,
        label_smoothing: float = 0.0,
        lasso_weight: float = 1e-4,
        lr: float = 1e-3,
        min_lr: float = 1e-6,
        warmup_steps: int = 500,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        roll: bool = False,
        seed: int = 0,
    ):
        """
        Args:
            init_from: the frozen encoder: an audiossl checkpoint (pretraining or classifier) or an exported /
                converted model directory. Its front end is used, with ``front_end`` overrides.
            encoder: an encoder spec instead of ``init_from`` (a random frozen encoder: a baseline).
            encoder_weights: ``student`` or ``teacher`` (a pretraining checkpoint's EMA teacher).
            front_end: ``FrontEndConfig`` overrides; unset kaldi ``mean``/``std`` come from the dataset's ``audiossl
                stats``, else the checkpoint; ``target_length`` left unset follows the dataset's clip length (in
                whole patches, as BAT sizes its windows per task), else the checkpoint's.
            probe: ``cgp``, ``linear``, ``lcgp`` or ``h2t``.
            pool: the clip embedding of exports (and the linear probe's input): ``cls`` (default with a CLS) or
                ``mean``.
            num_prototypes: CGP prototypes (10,000).
            dropout: before the probe's linear layer (0.2).
            loss: ``auto`` (asymmetric loss for multi-label data, cross-entropy for single-label) or ``bce``.
            asl_gamma_neg/asl_gamma_pos/asl_clip: the asymmetric loss (1, 0, 0).
            label_smoothing: single-label cross-entropy.
            lasso_weight: weight of Head2Toe's group-lasso penalty (``h2t`` only).
            lr/min_lr/warmup_steps/weight_decay/betas: AdamW with linear warm-up and cosine decay (BAT: 1e-3, 1e-6,
                500, 0.05, (0.9, 0.999)).
            roll: circular roll of each training clip (BAT's dataset-level augmentation).
            seed: seeds the per-step roll (with the rank and the step).
        """
        super().__init__()
        self.save_hyperparameters()
        if probe not in PROBE_KINDS:
            raise ValueError(f"probe must be one of {PROBE_KINDS}, got {probe!r}")
        if encoder is None and init_from is None:
            raise ValueError("give init_from (a checkpoint or model directory with the encoder to probe) or an encoder spec")
        if encoder_weights not in ("student", "teacher"):
            raise ValueError(f"encoder_weights must be 'student' or 'teacher', got {encoder_weights!r}")
        if loss not in ("auto", "bce"):
            raise ValueError(f"loss must be 'auto' or 'bce', got {loss!r}")
        self.model: AudioClassifier | None = None

    # --- building the model once the data is known -----------------------------------------------------------------
    def _encoder(self) -> tuple[AudioEncoder, dict | None]:
        hp = self.hparams
        if hp.init_from is None:
            return build_encoder(dict(hp.encoder)), None
        from audiossl.hub.reader import encoder_from_checkpoint

        prefix = "teacher.model." if hp.encoder_weights == "teacher" else None
        enc, fe = encoder_from_checkpoint(hp.init_from, prefix=prefix)
        return enc, fe.to_dict()

    def build(self, num_classes: int, label_names: list[str], multi_label: bool, data_stats: dict | None,
              data_sample_rate: int | None = None, datamodule=None) -> None:
        hp = self.hparams
        enc, init_fe = self._encoder()
        fe = {**(init_fe or {}), **(hp.front_end or {})}
        if datamodule is not None and "target_length" not in (hp.front_end or {}):
            fe.pop("target_length", None)  # the window follows the data's clips (BAT: 1 s -> 112 frames, 5 s -> 512)
            fe = data_target_length(fe, datamodule, enc.config.patch_size)
        if data_stats and fe.get("spectrogram", "kaldi") == "kaldi" and not {"mean", "std"} & set(hp.front_end or {}):
            fe.pop("mean", None), fe.pop("std", None)  # the dataset's statistics, as fine-tuning takes them
        pool = hp.pool or ("cls" if enc.num_prefix_tokens else "mean")
        head = HeadConfig(num_classes=num_classes, pool=pool, probe=hp.probe, num_prototypes=hp.num_prototypes,
                          dropout=hp.dropout)
        self.model = AudioClassifier(EncoderConfig.from_dict(enc.config.to_dict()), head,
                                     resolve_front_end(fe, data_stats), label_names, multi_label)
        check_sample_rate(data_sample_rate, self.model.front_end.config)
        self.model.encoder.load_state_dict(enc.state_dict())
        self.model.encoder.requires_grad_(False)
        self.model.encoder.eval()

    def setup(self, stage: str) -> None:
        if self.model is not None:
            return
        dm = labelled_datamodule(self, "probing")
        self.build(dm.num_classes, dm.label_names, dm.multi_label, dm.stats, dm.sample_rate, dm)

    @property
    def front_end(self) -> FrontEnd:
        return self.model.front_end

    def train(self, mode: bool = True):  # the frozen encoder stays in eval mode (no dropout, no drop path)
        super().train(mode)
        if self.model is not None:
            self.model.encoder.eval()
        return self

    # --- the step --------------------------------------------------------------------------------------------------
    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        if self.model.multi_label:
            if hp.loss == "bce":
                return F.binary_cross_entropy_with_logits(logits.float(), target.float())
            return asymmetric_loss(logits, target, hp.asl_gamma_neg, hp.asl_gamma_pos, hp.asl_clip)
        return F.cross_entropy(logits.float(), target.long(), label_smoothing=hp.label_smoothing)

    def probe_logits(self, x: torch.Tensor, frames: torch.Tensor | None) -> torch.Tensor:
        """Frozen encoder under ``no_grad`` (every block's tokens for multi-block probes), then the head with grad."""
        m = self.model
        with torch.no_grad():
            tokens, layers, valid = m.encode(x, frames, layers=m.layered_head)
        return m.head_logits(tokens, layers, valid, inplace=True)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        audio = batch["audio"]
        if self.hparams.roll:
            audio = roll_waveforms(audio, self.step_generator(batch_idx), batch.get("num_samples"))
        x, frames = self.features(audio, batch.get("num_samples"))
        logits = self.probe_logits(x, frames)
        loss = self.loss(logits, batch["target"])
        if self.hparams.probe == "h2t" and self.hparams.lasso_weight:
            loss = loss + self.hparams.lasso_weight * self.model.head.penalty()
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True, batch_size=x.shape[0])
        return loss

    # --- evaluation ------------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._scores, self._targets, self._keys = [], [], []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.model(*self.features(batch["audio"], batch.get("num_samples")))
        self._scores.append(self.model.probabilities(logits.float()))
        self._targets.append(batch["target"].float() if self.model.multi_label else batch["target"].long())
        self._keys.extend(batch["key"])

    def on_validation_epoch_end(self) -> None:
        distributed = self._trainer is not None and self.trainer.world_size > 1
        if not self._scores and not distributed:
            return
        C, dev = self.model.head_config.num_classes, self.device
        empty_t = torch.zeros(0, C, device=dev) if self.model.multi_label else torch.zeros(0, dtype=torch.long, device=dev)
        scores = gather_variable(self, torch.cat(self._scores) if self._scores else torch.zeros(0, C, device=dev))
        targets = gather_variable(self, torch.cat(self._targets) if self._targets else empty_t)
        self.eval_keys = gather_strings(self, self._keys)
        if scores.shape[0]:
            m = classification_metrics(scores, targets)
            self.log_dict({f"val/{k}": float(m[k]) for k in ("mAP", "mAUC", "d_prime", "accuracy")}, batch_size=1)
        self._scores, self._targets, self._keys = [], [], []

    # --- optimisation ----------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        groups = probe_param_groups([(f"model.{n}", p) for n, p in self.model.head.named_parameters()],
                                    hp.weight_decay)
        groups = [g for g in groups if g["params"]]
        opt = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas))
        total = total_steps(self.trainer)
        min_ratio = hp.min_lr / hp.lr if hp.lr > 0 else 0.0
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, hp.warmup_steps, total, min_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # --- checkpoints -----------------------------------------------------------------------------------------------
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

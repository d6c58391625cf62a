"""A-JEPA (Fei et al., 2023): predict the EMA target encoder's representations of masked target blocks, in latent space.

A-JEPA has no public code; this follows I-JEPA's design (Assran et al., 2023) plus the paper's audio changes, with
these choices made where the paper is silent (documented in the README):

1. ``jepa_masks``: one large context block and ``num_targets`` target blocks on the (time x freq) patch grid. A
   curriculum (``JepaMaskConfig``) moves the targets from random rectangles to time-frequency-aware strips
   (full-band time spans and full-time frequency bands) over the first ``curriculum_steps`` of training.
2. The context encoder (the student) sees only the context patches; the target encoder (an EMA copy) sees the whole
   spectrogram and its final-layer tokens are layer-normalised (I-JEPA) to give the targets.
3. The predictor — a narrow transformer (``predictor_dim``, ``predictor_depth``) with learned mask tokens and fixed
   sin-cos positions — predicts each target block from the context tokens.
4. Loss: mean squared error (A-JEPA's L2) or smooth L1 (I-JEPA), averaged over target patches and blocks.
5. EMA: linear from ``ema_start`` to ``ema_end`` over ``ema_anneal_steps`` (I-JEPA: 0.996 -> 1.0 over training).

Padding (``num_frames``): blocks are drawn on each clip's real grid (``jepa_masks``), padding and fillers stay out of
every attention, and only real target patches count in the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from audiossl.objectives.masking import JepaMaskConfig, jepa_masks
from audiossl.models.decoders import TokenDecoder
from audiossl.models.init import reference_init_, rescale_residual_branches_
from audiossl.objectives.base import PretrainModule, total_steps
from audiossl.objectives.ema import EMATeacher
from audiossl.objectives.eat import gather_tokens
from audiossl.objectives.targets import feature_std


class JEPA(PretrainModule):
    objective = "jepa"

    def __init__(
        self,
        encoder: dict,
        predictor_dim: int = 384,
        predictor_depth: int = 6,
        predictor_heads: int = 12,
        num_targets: int = 4,
        target_scale: tuple[float, float] = (0.15, 0.2),
        target_aspect: tuple[float, float] = (0.75, 1.5),
        context_scale: tuple[float, float] = (0.85, 1.0),
        strip_scale: tuple[float, float] = (0.1, 0.2),
        curriculum_steps: float = 0.5,
        tf_max: float = 1.0,
        loss_type: str = "mse",
        ema_start: float = 0.996,
        ema_end: float = 1.0,
        ema_anneal_steps: int = 100_000,
        weight_init: str = "ijepa",
        block_sizes: str = "ijepa",
        **kwargs,
    ):
        """
        Args:
            encoder: context/target encoder spec (``{name: vit_base, block_style: pre}``).
            predictor_dim/predictor_depth/predictor_heads: the narrow predictor transformer.
            num_targets: target blocks per clip.
            target_scale/target_aspect: area fraction and time/freq aspect of random target blocks.
            context_scale: area fraction of the context block (before removing target patches).
            strip_scale: fraction of the time (or frequency) axis covered by a time-frequency-aware strip.
            curriculum_steps: fraction of training over which tf-aware targets ramp up to ``tf_max``.
            tf_max: final probability that a target block is a tf-aware strip.
            loss_type: ``mse`` (A-JEPA's L2) or ``smooth_l1`` (I-JEPA).
            ema_start/ema_end/ema_anneal_steps: target-encoder decay schedule.
            block_sizes: ``ijepa`` (one size per batch for every random target block, scale and aspect from one
                uniform, as I-JEPA's collator) or ``independent`` (each block its own scale and log-uniform aspect).
            weight_init: ``ijepa`` (trunc-normal 0.02 everywhere, the patch embedding too, zero biases, and
                ``fix_init_weight``'s residual-branch rescaling by 1/sqrt(2 l) in encoder and predictor) or
                ``default`` (the encoder's own init).
        """
        super().__init__(encoder=encoder, **kwargs)
        if loss_type not in ("mse", "smooth_l1"):
            raise ValueError(f"loss_type must be 'mse' or 'smooth_l1', got {loss_type!r}")
        D = self.encoder.embed_dim
        self.predictor = TokenDecoder(D, predictor_dim, predictor_depth, predictor_heads, out_dim=D)
        if weight_init == "ijepa":
            reference_init_(self.encoder, "ijepa")
            rescale_residual_branches_(self.predictor.blocks)
        elif weight_init != "default":
            raise ValueError(f"weight_init must be 'ijepa' or 'default', got {weight_init!r}")
        self.teacher = EMATeacher(self.encoder, ema_start, ema_end, ema_anneal_steps)
        self.mask_cfg = JepaMaskConfig(
            num_targets=num_targets,
            target_scale=tuple(target_scale),
            target_aspect=tuple(target_aspect),
            context_scale=tuple(context_scale),
            strip_scale=tuple(strip_scale),
            curriculum_steps=curriculum_steps,
            tf_max=tf_max,
            block_sizes=block_sizes,
        )

    def progress(self) -> float:
        """Fraction of training done (drives the masking curriculum): steps over ``max_steps``, or over Lightning's
        estimate from the epochs when training is epoch-based."""
        if self._trainer is None:
            return 0.0
        return min(1.0, self.global_step / max(1, total_steps(self.trainer)))

    def compute_loss(self, fbank: torch.Tensor, generator: torch.Generator,
                     num_frames: torch.Tensor | None = None) -> dict:
        hp = self.hparams
        B, T, _ = fbank.shape
        grid = self.encoder.grid_shape(T)
        P = self.encoder.num_prefix_tokens
        patches, valid = self.encoder.embed_padded(fbank, num_frames)  # [B, N, D], [B, N] or None
        context, targets = jepa_masks(B, grid, self.progress(), self.mask_cfg, generator, self.device, valid)

        with torch.no_grad():
            full = self.teacher.model(fbank, num_frames=num_frames)[:, P:]  # [B, N, D]
            full = F.layer_norm(full.float(), full.shape[-1:])
        tokens = self.encoder.forward_tokens(patches, keep=context, valid=valid)[:, P:]  # [B, Kc, D]

        elementwise = F.mse_loss if hp.loss_type == "mse" else F.smooth_l1_loss
        losses, preds, tgts = [], [], []
        for tgt in targets:
            pred = self.predictor(tokens, context, tgt, grid, valid)  # [B, Kt, D]
            y = gather_tokens(full, tgt)
            err = elementwise(pred.float(), y, reduction="none").mean(dim=-1)  # [B, Kt]
            if valid is None:
                losses.append(err.mean())
            else:
                w = valid.gather(1, tgt).to(err.dtype)
                losses.append((err * w).sum() / w.sum().clamp_min(1.0))
                pred, y = pred[w.bool()], y[w.bool()]
            preds.append(pred)
            tgts.append(y)
        loss = torch.stack(losses).mean()
        pred_all = torch.cat([p.reshape(-1, p.shape[-1]) for p in preds])
        tgt_all = torch.cat([t.reshape(-1, t.shape[-1]) for t in tgts])
        return {
            "loss": loss,
            "latent_loss": loss.detach(),
            "context_patches": float(context.shape[1]),
            "target_patches": float(tgt_all.shape[0]) / B,
            "pred_std": feature_std(pred_all),
            "target_std": feature_std(tgt_all),
            "student_std": feature_std(tokens, None if valid is None else valid.gather(1, context)),
            "target_var": tgt_all.detach().float().var(),
            "tf_prob": self.mask_cfg.tf_max * min(1.0, self.progress() / max(self.mask_cfg.curriculum_steps, 1e-8)),
        }

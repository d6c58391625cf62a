"""BAT: Better Audio Transformer (Ghaffari et al., ICML 2026) — EAT's views and masks, a gated-attention trunk, block
output targets and a ViT decoder (``reference/methods-bat.md`` §3, §8).

Read top to bottom:
1. ``embed``: patch tokens with BAT's fixed positions, once per clip ``[B, N, D]``.
2. ``teacher_targets``: the EMA teacher (a full copy of the student encoder) sees the whole clip; its 12 *block
   outputs* (after ``norm2``; not EAT's FFN outputs) are instance-normalised over the tokens, averaged and
   layer-normalised without affine, both norms with eps 1e-6 -> ``y [B, N, D]``; the clip target is the token mean
   ``y_bar [B, D]``.
3. ``student``: every clip is repeated ``num_views`` (16) times, each view with its own inverse block mask (EAT's:
   5x5 visible blocks, exactly 102 of 512 patches kept); only the kept patches plus CLS run through the student.
4. ``decoder``: ``GatedViTDecoder`` — the kept outputs on a learned mask-token canvas + trainable sin-cos positions,
   6 gated post-LN blocks, a bias-free projection -> predictions for every patch.
5. ``loss`` (BAT's ``ssl_train_step``, fp32), weighted 1:1 and with none of EAT's 1/sqrt(D) or sample-size scalings:

       global = mean over views and channels of (student CLS - y_bar)^2      (no projection head)
       local  = sum over masked patches of mean_D (pred - y)^2 / number of masked patches

Optimisation as BAT: one AdamW group with weight decay on *every* parameter (biases, norms, CLS, mask token, decoder
positions; the encoder's table is a buffer and never trains), betas (0.9, 0.95), no gradient clipping, bf16 (the
CLI's default on GPUs). Initialisation as BAT: xavier-uniform weights and zero biases on every Linear (the gates
included), PyTorch's default for the patch convolution, CLS and mask token ``N(0, 0.02^2)``.

Padding (``num_frames``): the teacher attends to real patches only and its instance norm counts them only; ``y_bar``
averages real patches; masks are drawn over each clip's real patches (fillers are padding); padding keys take no
part in the decoder's attention; only real masked patches count in the local loss.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from audiossl.objectives.masking import inverse_block_mask
from audiossl.models.vit_decoder import GatedViTDecoder
from audiossl.objectives.base import PretrainModule, total_steps, warmup_cosine
from audiossl.objectives.eat import diagnostics, gather_tokens
from audiossl.objectives.ema import EMATeacher
from audiossl.objectives.targets import layer_targets, masked_mean

TARGET_EPS = 1e-6  # BAT's make_targets: inside the square roots of both norms


def bat_init_(module: nn.Module) -> None:
    """BAT's initialisation (``MLR_Student._init_weights``): xavier-uniform on every Linear weight, zero biases; the
    patch convolution back to PyTorch's default (our encoder uses xavier there)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    patch = getattr(module, "patch_embed", None)
    if isinstance(patch, nn.Conv2d):
        patch.reset_parameters()


class BAT(PretrainModule):
    objective = "bat"

    def __init__(
        self,
        encoder: dict,
        num_views: int = 16,
        mask_ratio: float = 0.8,
        mask_block: int = 5,
        mask_adjust: float = 0.07,
        average_top_k: int | None = None,
        global_weight: float = 1.0,
        decoder_depth: int = 6,
        decoder_heads: int | None = None,
        decoder_dim: int | None = None,
        decoder_mlp_ratio: float = 4.0,
        decoder_patches: int = 512,
        ema_start: float = 0.9998,
        ema_end: float = 0.99999,
        ema_anneal_steps: int = 100_000,
        decay_all_params: bool = True,
        bat_init: bool = True,
        **kwargs,
    ):
        """
        Args:
            encoder: student encoder spec; BAT uses ``{name: vit_base, block_style: post, attn_gate: true,
                pos_embed: sincos_bat, chunk_time_patches: 64}``.
            num_views: masked views of each clip for the student (the teacher runs once per clip).
            mask_ratio/mask_block/mask_adjust: EAT's inverse block masks (0.8, 5x5, 0.07).
            average_top_k: teacher blocks averaged into the targets (default: all of them).
            global_weight: weight of the CLS (global) loss against the masked-patch (local) loss (BAT: 1).
            decoder_depth/decoder_heads/decoder_dim/decoder_mlp_ratio: the gated ViT decoder (6 blocks, the encoder's
                heads and width, MLP ratio 4).
            decoder_patches: rows of the decoder's position table (BAT: 512 = 64 x 8 patches).
            ema_start/ema_end/ema_anneal_steps: teacher decay, annealed linearly (0.9998 -> 0.99999 over 100k).
            decay_all_params: BAT's single AdamW group, weight decay on every parameter (False: the base class's
                groups, no decay on biases, norms and tokens).
            bat_init: BAT's xavier initialisation of the student and the decoder (False: the encoder's own).
        """
        super().__init__(encoder=encoder, **kwargs)
        enc = self.encoder
        if enc.num_prefix_tokens < 1:
            raise ValueError("BAT's global loss regresses the student's CLS: the encoder needs num_prefix_tokens >= 1")
        self.top_k = average_top_k or enc.config.depth
        self.decoder = GatedViTDecoder(enc.embed_dim, decoder_dim, decoder_depth, decoder_heads or enc.config.num_heads,
                                       decoder_mlp_ratio, decoder_patches, True, enc.config.norm_eps)
        if bat_init:
            bat_init_(enc)
            bat_init_(self.decoder)
        self.teacher = EMATeacher(enc, ema_start, ema_end, ema_anneal_steps)  # a copy of the initialised student

    # --- pieces --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_targets(self, fbank: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(token targets ``y [B, N, D]``, clip targets ``y_bar [B, D]``) from the teacher's block outputs."""
        tm = self.teacher.model
        _, layers, _ = tm.forward_tokens(tm.embed(fbank), return_layers=True, valid=valid)
        P = tm.num_prefix_tokens
        y = layer_targets([h[:, P:] for h in layers], self.top_k, valid=valid, eps=TARGET_EPS)
        return y, masked_mean(y, valid)

    def masks(self, batch: int, grid: tuple[int, int], generator: torch.Generator, valid: torch.Tensor | None = None):
        hp = self.hparams
        return inverse_block_mask(batch, grid, hp.mask_ratio, hp.mask_block, hp.mask_adjust, generator, self.device,
                                  valid)

    # --- the objective -------------------------------------------------------------------------------------------
    def compute_loss(self, fbank: torch.Tensor, generator: torch.Generator,
                     num_frames: torch.Tensor | None = None) -> dict:
        hp = self.hparams
        B, T, _ = fbank.shape
        V = hp.num_views
        enc = self.encoder
        grid = enc.grid_shape(T)
        N = grid[0] * grid[1]

        patches, valid = enc.embed_padded(fbank, num_frames)  # [B, N, D] once per clip, [B, N] or None
        y, y_bar = self.teacher_targets(fbank, valid)  # [B, N, D], [B, D]

        valid_v = None if valid is None else valid.repeat_interleave(V, dim=0)  # [BV, N]
        keep, masked = self.masks(B * V, grid, generator, valid_v)  # [BV, K], [BV, M]
        tokens = enc.forward_tokens(patches.repeat_interleave(V, dim=0), keep=keep, valid=valid_v)  # [BV, 1 + K, D]
        P = enc.num_prefix_tokens
        pred = self.decoder(tokens[:, P:], keep, N, valid_v)  # [BV, N, D]

        rows = torch.arange(B * V, device=fbank.device) // V  # view -> clip
        pred_m = gather_tokens(pred, masked)  # [BV, M, D]
        target_m = gather_tokens(y, masked, rows)  # [BV, M, D]
        err = (pred_m.float() - target_m).pow(2).mean(dim=-1)  # [BV, M]
        m_valid = None if valid_v is None else torch.gather(valid_v, 1, masked)  # [BV, M]
        if m_valid is None:
            local = err.mean()
        else:
            local = (err * m_valid).sum() / m_valid.sum().clamp_min(1)
        global_ = (tokens[:, 0].float() - y_bar[rows]).pow(2).mean()
        return {
            "loss": local + hp.global_weight * global_,
            "local_loss": local.detach(),
            "global_loss": global_.detach(),
            **diagnostics(keep, masked, pred_m, target_m, tokens, m_valid, valid_v),
        }

    # --- optimisation --------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        """BAT: ``AdamW(student.parameters(), weight_decay=wd)`` — one group, decay on everything — and the base
        class's per-step warm-up + cosine to ``min_lr``."""
        hp = self.hparams
        if not hp.decay_all_params:
            return super().configure_optimizers()
        params = [p for _, p in self.trainable_named_parameters()]
        opt = torch.optim.AdamW([{"params": params, "weight_decay": hp.weight_decay, "lr_scale": 1.0}], lr=hp.lr,
                                betas=tuple(hp.betas))
        total = total_steps(self.trainer)
        min_ratio = hp.min_lr / hp.lr if hp.lr > 0 else 0.0
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, hp.warmup_steps, total, min_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

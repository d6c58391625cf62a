"""BEATs' self-distilled acoustic tokenizer (iterations >= 2): learn codes that carry what the teacher encodes.

Read top to bottom:
1. ``teacher``: the previous iteration's BEATs encoder (an audiossl pretraining checkpoint of the ``beats``
   objective, or an export/convert directory), frozen, in eval mode; its last-layer output ``[B, N, Dt]`` on the
   whole clip is the target.
2. ``encoder`` -> ``quantize_layer`` (Linear-Tanh-Linear to ``code_dim``) -> ``quantizer``: l2-normalised nearest
   codeword (``NormEMAQuantizer``: EMA codebook, decay 0.99, k-means init on the first batch, counts all-reduced
   under DDP), straight-through.
3. ``estimator``: a 3-block transformer (``RelPosTransformer``) from the quantized vectors to ``Dt``.
4. ``loss``: mean over real tokens of ``1 - cos(estimate, teacher)`` plus ``commitment_weight`` x the commitment
   term (the quantizer's ``mse(sg[e], z)``; the codebook itself moves by EMA, BEiT v2 / BEATs ``quantizer.py``).
   Logged: the cosine term, the commitment term, and the codebook's perplexity, used and dead codes.

At inference the estimator is dropped: ``DistilledTokenizer`` (``beats_tokenizers.py``) loads the encoder,
``quantize_layer`` and codebook of this run's checkpoint and labels the next student's patches.
Choices where the paper is silent: the estimator's width (the teacher's) and heads (the encoder's), commitment
weight 1 (the released quantizer's ``beta``), no masking of the tokenizer's input (BEATs' ``extract_labels`` sees the
whole clip). The iter3+ variants (supervised teachers distilling logits) are not implemented.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from audiossl.errors import ConfigError
from audiossl.models import build_encoder
from audiossl.models.quantizer import NormEMAQuantizer
from audiossl.models.rel_transformer import RelPosTransformer
from audiossl.objectives.base import PretrainModule
from audiossl.objectives.beats_tokenizers import quantize_head
from audiossl.objectives.targets import masked_mean


class BEATsTokenizer(PretrainModule):
    objective = "beats_tokenizer"

    def __init__(
        self,
        encoder: dict,
        teacher_encoder: dict,
        teacher: str | None = None,
        codebook_size: int = 1024,
        code_dim: int = 256,
        codebook_decay: float = 0.99,
        kmeans_init: bool = True,
        estimator_depth: int = 3,
        commitment_weight: float = 1.0,
        **kwargs,
    ):
        """
        Args:
            encoder: the tokenizer's encoder spec (``{name: beats_base}``).
            teacher_encoder: the teacher's encoder spec (the previous iteration's student config; checked against
                the ``teacher`` checkpoint when training starts).
            teacher: the previous iteration's checkpoint (``beats`` pretraining ``last.ckpt``) or an export/convert
                directory; loaded when training starts.
            codebook_size/code_dim: the codebook (1024 x 256).
            codebook_decay: EMA decay of the codebook (0.99).
            kmeans_init: initialise the codebook by k-means on the first batch.
            estimator_depth: blocks of the estimator (3).
            commitment_weight: weight of the quantizer's commitment term.
        """
        super().__init__(encoder=encoder, **kwargs)
        D = self.encoder.embed_dim
        self.quantize_layer = quantize_head(D, code_dim)
        self.quantizer = NormEMAQuantizer(codebook_size, code_dim, codebook_decay, kmeans_init)
        self.teacher = build_encoder(teacher_encoder)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        t = self.teacher.config
        c = self.encoder.config
        for k in ("patch_size", "patch_stride", "num_mel_bins", "partial_patch", "patch_order"):
            if getattr(t, k) != getattr(c, k):
                raise ConfigError(f"teacher and tokenizer encoders put patches on different grids ({k}: "
                                  f"{getattr(t, k)} vs {getattr(c, k)})")
        if t.num_prefix_tokens:
            raise ConfigError("the teacher must be a BEATs encoder without prefix tokens")
        self.estimator = RelPosTransformer(code_dim, t.embed_dim, estimator_depth, c.num_heads, t.embed_dim,
                                           c.mlp_ratio, c.rel_pos_buckets or 320, c.rel_pos_max_distance, c.norm_eps)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and not getattr(self, "_teacher_loaded", False):
            self.load_teacher(self.hparams.teacher)
            self._teacher_loaded = True

    def load_teacher(self, path: str | None) -> None:
        from audiossl.hub.reader import encoder_from_checkpoint, read_checkpoint
        from audiossl.config_dict import config_differences
        from audiossl.models.encoder import WEIGHT_NEUTRAL

        if not path:
            raise ConfigError("BEATsTokenizer needs a teacher: --model.init_args.teacher PREVIOUS_ITERATION/last.ckpt")
        src = read_checkpoint(path) if os.path.isfile(path) else path
        if isinstance(src, dict) and src["audiossl"].get("objective") not in ("beats", None):
            raise ConfigError(f"teacher {path} was trained by the {src['audiossl'].get('objective')!r} objective; "
                              "the tokenizer distils a BEATs encoder (a beats run's checkpoint)")
        enc, front_end = encoder_from_checkpoint(src)
        diffs = config_differences(self.teacher.config.to_dict(), enc.config.to_dict(), WEIGHT_NEUTRAL)
        if diffs:
            raise ConfigError(f"teacher {path}: its encoder differs from teacher_encoder (ours, its): {diffs}")
        ours = {k: v for k, v in self.front_end.config.to_dict().items() if k != "target_length"}
        theirs = {k: v for k, v in front_end.to_dict().items() if k != "target_length"}
        if ours != theirs:
            raise ConfigError(f"teacher {path} was trained on another front end: "
                              f"{config_differences(ours, theirs)}")
        self.teacher.load_state_dict(enc.state_dict())

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def audiossl_metadata(self) -> dict:
        meta = super().audiossl_metadata()
        meta["tokenizer"] = {"codebook_size": self.quantizer.num_codes, "code_dim": self.quantizer.dim}
        return meta

    def compute_loss(self, fbank: torch.Tensor, generator: torch.Generator,
                     num_frames: torch.Tensor | None = None) -> dict:
        patches, valid = self.encoder.embed_padded(fbank, num_frames)  # [B, N, D], [B, N] or None
        z = self.quantize_layer(self.encoder.forward_tokens(patches, valid=valid))  # [B, N, code_dim]
        z_q, commit, codes, stats = self.quantizer(z, valid, generator)
        with torch.no_grad():
            t_patches, t_valid = self.teacher.embed_padded(fbank, num_frames)
            target = self.teacher.forward_tokens(t_patches, valid=t_valid)  # [B, N, Dt]
        pred = self.estimator(z_q, valid)  # [B, N, Dt]
        cos = F.cosine_similarity(pred.float(), target.float(), dim=-1)  # [B, N]
        cos_loss = masked_mean((1.0 - cos)[..., None], valid)[:, 0]  # [B]
        if valid is not None:  # every real token weighs the same, whatever its clip's length
            w = valid.sum(1).to(cos_loss.dtype)
            cos_loss = (cos_loss * w).sum() / w.sum().clamp_min(1.0)
        else:
            cos_loss = cos_loss.mean()
        loss = cos_loss + self.hparams.commitment_weight * commit
        return {"loss": loss, "cosine_loss": cos_loss.detach(), "commitment": commit.detach(),
                **{k: v.detach() for k, v in stats.items()}}


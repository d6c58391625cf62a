"""BEATs (Chen et al., ICML 2023): masked acoustic-token prediction, one iteration of the BEATs chain.

Read top to bottom:
1. ``tokenizer``: frozen; labels every patch of the whole clip with one of ``codebook_size`` codes ``[B, N]``
   (iteration 1: ``RandomProjectionTokenizer``; later iterations: a ``DistilledTokenizer`` trained by
   ``BEATsTokenizer`` with the previous iteration's encoder as teacher).
2. ``random_mask``: 75% of each clip's real patches are masked uniformly at random (patch-level, not blocks).
3. ``encoder``: the student (``beats_base``) sees the visible 25% only (MAE-style); with
   ``sparse_positions='original'`` its relative and convolutional positions are the tokens' places on the full grid.
4. ``predictor``: a transformer label predictor over the full grid: the encoder outputs at the visible positions, a
   learned mask embedding at the masked ones (the paper: zero vectors; the issue and ESPnet: a mask embedding --
   a learned vector initialised near zero), then ``RelPosTransformer`` -> logits over the codebook at the masked
   positions.
5. ``loss``: cross-entropy on the masked, real positions (mean over them), label smoothing as configured.

Padding (``num_frames``): masks over each clip's real patches, padding out of the encoder's and the predictor's
attention, and only real masked patches in the loss and the statistics.

Choices where the paper is silent (see the configs): predictor depth 3 (the tokenizer estimator's depth in the
paper; ESPnet 202611's default), width = the encoder's; label smoothing 0.1 and AdamW betas (0.9, 0.98), weight
decay 0.01 (ESPnet's OpenBEATs recipe).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from audiossl.errors import ConfigError
from audiossl.objectives.masking import random_mask
from audiossl.models.quantizer import code_perplexity
from audiossl.models.rel_transformer import RelPosTransformer
from audiossl.objectives.base import PretrainModule
from audiossl.objectives.beats_tokenizers import DistilledTokenizer, build_tokenizer


def masked_token_ce(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
                    label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of ``logits [B, M, V]`` against ``targets [B, M]`` over the ``weight [B, M]`` positions
    (all when ``None``), and the accuracy there."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none", label_smoothing=label_smoothing)
    hit = (logits.argmax(-1) == targets).float()
    if weight is None:
        return ce.mean(), hit.mean()
    w = weight.to(ce.dtype)
    n = w.sum().clamp_min(1.0)
    return (ce * w).sum() / n, (hit * w).sum() / n


class BEATs(PretrainModule):
    objective = "beats"

    def __init__(
        self,
        encoder: dict,
        tokenizer: dict | None = None,
        mask_ratio: float = 0.75,
        predictor_depth: int = 3,
        predictor_heads: int | None = None,
        label_smoothing: float = 0.1,
        **kwargs,
    ):
        """
        Args:
            encoder: student encoder spec, ``{name: beats_base}`` (no CLS token).
            tokenizer: ``{kind: random, seed: 0, codebook_size: 1024, code_dim: 256}`` (iteration 1) or
                ``{kind: distilled, checkpoint: TOKENIZER.ckpt, encoder: {...}, codebook_size, code_dim}``
                (iteration >= 2; the checkpoint of a ``beats_tokenizer`` run, loaded when training starts).
            mask_ratio: fraction of each clip's real patches masked (0.75).
            predictor_depth/predictor_heads: the label predictor (3 blocks; heads default to the encoder's).
            label_smoothing: of the masked-token cross-entropy.
        """
        super().__init__(encoder=encoder, **kwargs)
        c = self.encoder.config
        if c.num_prefix_tokens:
            raise ConfigError("BEATs' student has no CLS token: use num_prefix_tokens: 0 (encoder name beats_base)")
        self.tokenizer = build_tokenizer(tokenizer, self.encoder)
        self.tokenizer.requires_grad_(False)
        if isinstance(self.tokenizer, DistilledTokenizer):
            t = self.tokenizer.encoder.config
            same = ("patch_size", "patch_stride", "num_mel_bins", "partial_patch", "patch_order")
            if any(getattr(t, k) != getattr(c, k) for k in same):
                raise ConfigError(f"the tokenizer encoder's patch grid ({', '.join(f'{k}={getattr(t, k)}' for k in same)}) "
                                  f"differs from the student's")
        D = self.encoder.embed_dim
        self.mask_embedding = nn.Parameter(torch.zeros(D))
        nn.init.normal_(self.mask_embedding, std=0.02)
        self.predictor = RelPosTransformer(D, D, predictor_depth, predictor_heads or c.num_heads,
                                           self.tokenizer.codebook_size, c.mlp_ratio,
                                           c.rel_pos_buckets or 320, c.rel_pos_max_distance, c.norm_eps)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        spec = dict(self.hparams.tokenizer or {})
        if isinstance(self.tokenizer, DistilledTokenizer) and stage == "fit" and not getattr(self, "_tok_loaded", False):
            if not spec.get("checkpoint"):
                raise ConfigError("a distilled tokenizer needs --model.init_args.tokenizer.checkpoint (the last.ckpt "
                                  "of a beats_tokenizer run)")
            self.tokenizer.load_checkpoint(spec["checkpoint"])
            self._tok_loaded = True

    def trainable_named_parameters(self):
        return [(n, p) for n, p in super().trainable_named_parameters() if not n.startswith("tokenizer.")]

    def train(self, mode: bool = True):
        super().train(mode)
        self.tokenizer.eval()
        return self

    def predictor_input(self, tokens: torch.Tensor, keep: torch.Tensor, N: int) -> torch.Tensor:
        """Encoder outputs ``[B, K, D]`` at ``keep [B, K]`` -> the full grid ``[B, N, D]``, mask embedding elsewhere."""
        B, K, D = tokens.shape
        x = self.mask_embedding.to(tokens.dtype).expand(B, N, D).clone()
        return x.scatter(1, keep[..., None].expand(-1, -1, D), tokens)

    def compute_loss(self, fbank: torch.Tensor, generator: torch.Generator,
                     num_frames: torch.Tensor | None = None) -> dict:
        hp = self.hparams
        B, T, _ = fbank.shape
        gt, gf = self.encoder.grid_shape(T)
        N = gt * gf
        patches, valid = self.encoder.embed_padded(fbank, num_frames)  # [B, N, D], [B, N] or None
        with torch.no_grad():
            codes = self.tokenizer(fbank, self.encoder, num_frames)  # [B, N]
        keep, masked = random_mask(B, N, hp.mask_ratio, generator, self.device, valid)  # [B, K], [B, M]
        tokens = self.encoder.forward_tokens(patches, keep=keep, valid=valid)  # [B, K, D]
        logits = self.predictor(self.predictor_input(tokens, keep, N), valid, select=masked)  # [B, M, V]
        targets = codes.gather(1, masked)
        m_valid = None if valid is None else valid.gather(1, masked)
        loss, acc = masked_token_ce(logits, targets, m_valid, hp.label_smoothing)
        real = codes.reshape(-1) if valid is None else codes[valid]
        counts = torch.bincount(real, minlength=self.tokenizer.codebook_size)
        return {
            "loss": loss,
            "token_ce": loss.detach(),
            "masked_acc": acc.detach(),
            "masked_pct": masked.shape[1] / N if valid is None else m_valid.sum() / valid.sum().clamp_min(1),
            "target_perplexity": code_perplexity(counts),
            "target_codes_used": (counts > 0).sum().float(),
        }

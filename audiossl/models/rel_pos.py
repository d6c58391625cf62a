"""Gated relative position bias (WavLM / BEATs) and the attention that applies it.

* ``relative_buckets``: T5's bidirectional buckets of ``key - query`` token distances: half the buckets per
  direction (positive distances offset by ``num_buckets / 2``); distances below a quarter of the buckets are exact,
  longer ones are log-spaced up to ``max_distance`` and saturate there. BEATs: 320 buckets, ``max_distance`` 800,
  over the flattened token index (frequency neighbours are 1 apart, time neighbours ``Fp`` apart).
* ``RelativePositionBias``: one ``[num_buckets, heads]`` table shared by every block; ``forward(positions)`` gives
  the un-gated bias ``[B or 1, H, N, N]`` of tokens at ``positions`` (their indices on the full grid, so kept tokens
  of a masked sequence keep their original distances).
* ``GatedRelPosAttention``: multi-head attention whose additive mask is ``gate * bias`` per block, head and query,
  with ``(a, b) = sigmoid(sum of pairs of Linear(head_dim, 8)(q))`` and ``gate = a * (b * grep_a[h] - 1) + 2``,
  ``q`` being the query projection before the ``1/sqrt(d)`` scaling. Padding keys get ``-inf``. The softmax is
  ``softmax(q k^T / sqrt(d) + gate * bias)``: BEATs' subtract-the-row-max-and-rescale-by-32 trick is an exact
  identity of the softmax, so ``F.scaled_dot_product_attention`` with a float mask computes the same thing.
  The parameter names (``qkv`` fused, ``proj``) are timm's, so state dicts look like the plain blocks'.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def relative_buckets(rel: torch.Tensor, num_buckets: int = 320, max_distance: int = 800) -> torch.Tensor:
    """``rel`` (``key - query`` distances, int) -> bucket indices in ``[0, num_buckets)`` (same shape, int64).

    Float operations in BEATs' order (``log(d / exact) / log(max / exact) * (half - exact)``, truncated), so every
    bucket boundary falls where theirs does."""
    half = num_buckets // 2
    exact = half // 2
    out = (rel > 0).to(torch.long) * half
    d = rel.abs()
    # d = 0 takes the exact branch; clamping keeps log() finite there (the value is discarded)
    far = exact + (torch.log(d.clamp_min(1).float() / exact) / math.log(max_distance / exact) * (half - exact)).to(torch.long)
    far = torch.clamp(far, max=half - 1)
    return out + torch.where(d < exact, d, far)


class RelativePositionBias(nn.Module):
    """The shared bucket table ``weight [num_buckets, heads]`` (an ``nn.Embedding``, BEATs' layout)."""

    def __init__(self, num_heads: int, num_buckets: int = 320, max_distance: int = 800):
        super().__init__()
        if num_buckets < 4 or num_buckets % 4:
            raise ValueError(f"rel_pos_buckets must be a positive multiple of 4, got {num_buckets}")
        if max_distance <= num_buckets // 4:
            raise ValueError(f"rel_pos_max_distance {max_distance} must exceed the exact range {num_buckets // 4}")
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.table = nn.Embedding(num_buckets, num_heads)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """``positions`` ``[N]`` (shared by the batch) or ``[B, N]`` token indices -> bias ``[1 or B, H, N, N]``."""
        p = positions if positions.dim() == 2 else positions[None]
        rel = p[:, None, :] - p[:, :, None]  # [B, Nq, Nk]: key - query
        bias = self.table(relative_buckets(rel, self.num_buckets, self.max_distance))  # [B, Nq, Nk, H]
        return bias.permute(0, 3, 1, 2)


class GatedRelPosAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.grep_linear = nn.Linear(self.head_dim, 8)
        self.grep_a = nn.Parameter(torch.ones(1, num_heads, 1, 1))
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def gate(self, q: torch.Tensor) -> torch.Tensor:
        """Unscaled queries ``[B, H, N, d]`` -> per-query gates ``[B, H, N, 1]`` (values in (1, 2 + grep_a))."""
        B, H, N, _ = q.shape
        a, b = torch.sigmoid(self.grep_linear(q).view(B, H, N, 2, 4).sum(-1)).chunk(2, dim=-1)
        return a * (b * self.grep_a - 1.0) + 2.0

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, N, D]``; ``attn_mask`` bool ``[B, 1, 1, N]`` (True = key takes part) or ``None``; ``pos_bias``
        ``[1 or B, H, N, N]`` (``RelativePositionBias``) or ``None`` (plain attention)."""
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, H, N, d] each
        mask = attn_mask
        if pos_bias is not None:
            mask = self.gate(q) * pos_bias  # [B, H, N, N]
            if attn_mask is not None:
                mask = mask.masked_fill(~attn_mask, float("-inf"))
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)  # [B, H, N, d]
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, D)))

"""A small BEATs-style transformer over a full token grid: BEATs' label predictor and its tokenizer's estimator.

``in_proj`` (Linear to ``dim``) -> ``depth`` post-LN DeepNorm blocks with gated relative position bias (one table
shared by the blocks, positions = token indices on the grid; no convolutional positions) -> LayerNorm -> ``out_proj``
(Linear to ``out_dim``). Padding keys are kept out of attention. The same block type and init as the BEATs encoder,
so the predictor sees positions exactly as the encoder does (ESPnet's predictor has this layout too).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from audiossl.models.blocks import Block
from audiossl.models.rel_pos import GatedRelPosAttention, RelativePositionBias


class RelPosTransformer(nn.Module):
    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, out_dim: int, mlp_ratio: float = 4.0,
                 num_buckets: int = 320, max_distance: int = 800, norm_eps: float = 1e-5, dropout: float = 0.0):
        super().__init__()
        self.in_proj = nn.Linear(in_dim, dim)
        self.rel_pos = RelativePositionBias(num_heads, num_buckets, max_distance)
        alpha = (2.0 * depth) ** 0.25
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, True, 0.0, norm_eps, "post",
                  attn=GatedRelPosAttention(dim, num_heads, True, dropout, dropout), residual_scale=alpha,
                  dropout=dropout)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.out_proj = nn.Linear(dim, out_dim)
        self.reset_parameters(depth)

    @torch.no_grad()
    def reset_parameters(self, depth: int) -> None:
        """BERT normal(0, 0.02) and DeepNorm's xavier gains, as the encoder's ``deep_norm`` init."""
        beta = (8.0 * depth) ** -0.25
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        for blk in self.blocks:
            D = blk.attn.qkv.weight.shape[1]
            nn.init.xavier_normal_(blk.attn.qkv.weight[:D])
            nn.init.xavier_normal_(blk.attn.qkv.weight[D : 2 * D])
            nn.init.xavier_normal_(blk.attn.qkv.weight[2 * D :], gain=beta)
            for lin in (blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
                nn.init.xavier_normal_(lin.weight, gain=beta)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None,
                select: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, N, in_dim]`` (``valid [B, N]``: real tokens) -> ``[B, N, out_dim]``, or only at the token indices
        ``select [B, M]`` -> ``[B, M, out_dim]`` (the output projection then runs on those only)."""
        h = self.in_proj(x)
        bias = self.rel_pos(torch.arange(h.shape[1], device=h.device))  # [1, H, N, N]
        mask = None if valid is None else valid[:, None, None, :]
        for blk in self.blocks:
            h, _ = blk(h, mask, bias)
        h = self.norm(h)
        if select is not None:
            h = torch.gather(h, 1, select[..., None].expand(-1, -1, h.shape[-1]))
        return self.out_proj(h)

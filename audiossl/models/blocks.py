"""Transformer blocks in the two styles the reference models use.

``pre``  (timm, AST, AudioMAE):          x = x + attn(norm1(x));  h = mlp(norm2(x));  x = x + h
``post`` (data2vec 2.0, EAT, SSLAM, BAT): x = x + attn(x);  r = norm1(x);  h = mlp(r);  x = norm2(r + h)

Both return ``(x, h)``: the block output and the FFN output before the residual (EAT's per-layer target).
Attention and MLP are timm's layers; attention runs through ``F.scaled_dot_product_attention`` (flash on GPUs).
``gated=True`` (BAT) multiplies the attention output, per token and channel, by ``sigmoid(gate(x))`` of the block's
attention input before the output projection: ``proj(SDPA(q, k, v) * sigmoid(gate(x)))`` (timm >= 1.0.28's
``Attention(gated=True)``; the gate is a ``Linear(D, D)`` with a bias when ``qkv_bias``; keys ``attn.gate.*``).
``attn_mask`` (bool ``[B, 1, 1, N]``, True = this key takes part) keeps padding tokens out of every query's attention.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import Attention, DropPath, Mlp

BLOCK_STYLES = ("pre", "post")


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        style: str = "pre",
        gated: bool = False,
    ):
        super().__init__()
        if style not in BLOCK_STYLES:
            raise ValueError(f"block_style must be one of {BLOCK_STYLES}, got {style!r}")
        self.style = style
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, gated=gated)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [B, N, D]; attn_mask: bool [B, 1, 1, N] or None
        if self.style == "pre":
            x = x + self.drop_path(self.attn(self.norm1(x), attn_mask=attn_mask))
            h = self.mlp(self.norm2(x))
            return x + self.drop_path(h), h
        x = x + self.drop_path(self.attn(x, attn_mask=attn_mask))
        r = self.norm1(x)
        h = self.mlp(r)
        return self.norm2(r + self.drop_path(h)), h

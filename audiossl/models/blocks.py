"""Transformer blocks in the two styles the reference models use.

``pre``  (timm, AST, AudioMAE):          x = x + attn(norm1(x));  h = mlp(norm2(x));  x = x + h
``post`` (data2vec 2.0, EAT, SSLAM, BAT): x = x + attn(x);  r = norm1(x);  h = mlp(r);  x = norm2(r + h)

Both return ``(x, h)``: the block output and the FFN output before the residual (EAT's per-layer target).
Attention and MLP are timm's layers; attention runs through ``F.scaled_dot_product_attention`` (flash on GPUs).
``gated=True`` (BAT) multiplies the attention output, per token and channel, by ``sigmoid(gate(x))`` of the block's
attention input before the output projection: ``proj(SDPA(q, k, v) * sigmoid(gate(x)))`` (timm >= 1.0.28's
``Attention(gated=True)``; the gate is a ``Linear(D, D)`` with a bias when ``qkv_bias``; keys ``attn.gate.*``).
``attn_mask`` (bool ``[B, 1, 1, N]``, True = this key takes part) keeps padding tokens out of every query's attention.

BEATs options: ``attn`` replaces timm's attention by another module taking ``(x, attn_mask=, pos_bias=)`` (the gated
relative-position attention, ``rel_pos.py``); ``residual_scale`` is DeepNorm's alpha on the residual path of the
post style, ``x = norm1(alpha * x + attn(x))``, ``x = norm2(alpha * r + h)``; ``dropout`` follows the attention
output and the FFN output, ``attn_drop`` the attention probabilities.
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
        *,
        attn: nn.Module | None = None,
        residual_scale: float = 1.0,
        dropout: float = 0.0,
        attn_drop: float = 0.0,
        gated: bool = False,
    ):
        super().__init__()
        if style not in BLOCK_STYLES:
            raise ValueError(f"block_style must be one of {BLOCK_STYLES}, got {style!r}")
        self.style = style
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        if attn is not None and gated:
            raise ValueError("gated attention is an option of the default attention, not of a replacement module")
        self.attn = attn if attn is not None else Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias,
                                                            attn_drop=attn_drop, proj_drop=dropout, gated=gated)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU, drop=(0.0, dropout))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.alpha = float(residual_scale)
        if self.alpha != 1.0 and style != "post":
            raise ValueError("residual_scale (DeepNorm) applies to post-LN blocks only")

    def _attend(self, x, attn_mask, pos_bias):
        if pos_bias is None:
            return self.attn(x, attn_mask=attn_mask)
        return self.attn(x, attn_mask=attn_mask, pos_bias=pos_bias)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                pos_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [B, N, D]; attn_mask: bool [B, 1, 1, N] or None; pos_bias: [1 or B, H, N, N] or None
        if self.style == "pre":
            x = x + self.drop_path(self._attend(self.norm1(x), attn_mask, pos_bias))
            h = self.mlp(self.norm2(x))
            return x + self.drop_path(h), h
        a = self.alpha
        x = (x if a == 1.0 else a * x) + self.drop_path(self._attend(x, attn_mask, pos_bias))
        r = self.norm1(x)
        h = self.mlp(r)
        return self.norm2((r if a == 1.0 else a * r) + self.drop_path(h)), h

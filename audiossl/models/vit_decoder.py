"""BAT's decoder (``ViT_MaskedDecoder``): a post-LN, gated-attention transformer over the whole patch grid.

The student's outputs at the kept patches are scattered onto a canvas of one learned mask token, a *trainable* table
in BAT's sin-cos layout (``pos_embed.sincos_bat``, a prefix of it for shorter grids) is added everywhere, ``depth``
post-LN blocks with gated attention run over all ``N`` positions (no CLS, no pre-norm, no final norm), and a linear
projection without bias maps back to the encoder width. Padding patches and fillers (``valid``) take no part in
attention; their predictions are meaningless.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from audiossl.models.blocks import Block
from audiossl.models.decoders import scatter_to_grid
from audiossl.models.pos_embed import sincos_bat


class GatedViTDecoder(nn.Module):
    def __init__(self, in_dim: int, dim: int | None = None, depth: int = 6, num_heads: int = 12, mlp_ratio: float = 4.0,
                 max_patches: int = 512, gated: bool = True, norm_eps: float = 1e-6):
        super().__init__()
        dim = dim or in_dim
        if dim % num_heads:
            raise ValueError(f"decoder width {dim} is not divisible by decoder_heads {num_heads}")
        self.in_proj = nn.Linear(in_dim, dim, bias=False) if dim != in_dim else nn.Identity()
        self.mask_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(sincos_bat(dim, max_patches).float()[None])  # [1, max_patches, dim], trained
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, True, 0.0, norm_eps, "post", gated=gated)
                                    for _ in range(depth))
        self.out_proj = nn.Linear(dim, in_dim, bias=False)

    def forward(self, visible: torch.Tensor, keep: torch.Tensor, num_patches: int,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """visible ``[B, K, Din]`` (student patch outputs, prefix removed) at ``keep [B, K]`` -> predictions for all
        ``num_patches`` positions ``[B, N, Din]``; ``valid [B, N]``: real patches."""
        if num_patches > self.pos.shape[1]:
            raise ValueError(f"the decoder's position table has {self.pos.shape[1]} rows, the grid {num_patches} patches")
        x = self.in_proj(visible)  # [B, K, dim]
        B = x.shape[0]
        canvas = self.mask_token.to(x.dtype).expand(B, num_patches, -1)
        x = scatter_to_grid(x, keep, num_patches, canvas) + self.pos[:, :num_patches]  # [B, N, dim]
        mask = None if valid is None else valid[:, None, None, :]
        for blk in self.blocks:
            x, _ = blk(x, mask)
        return self.out_proj(x)

"""Student-side decoders for masked prediction.

* ``CNNDecoder2d`` (EAT / data2vec 2.0 image): the student's visible tokens are put back on the patch grid, masked
  slots filled with N(0, noise_std) noise and no positions; ``layers`` x [grouped Conv2d (kernel k, padding k//2)
  -> LayerNorm over channels without affine -> GELU] each with a residual connection, then a Linear.
* ``TokenDecoder`` (MAE decoder, JEPA predictor): a narrow pre-LN transformer. Visible tokens are projected to the
  decoder width, learned mask tokens are placed at the query positions, fixed sin-cos positions are added to
  everything, and the outputs at the query positions are projected to ``out_dim``.

Both take an optional ``valid [B, N]`` padding mask (``AudioEncoder.patch_valid``). The CNN decoder zeroes padding
positions at its input and after every layer, so a real position sees exactly what zero padding at the clip's own
edge would show it; the token decoder keeps padding tokens (and fillers) out of attention.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from audiossl.models.blocks import Block
from audiossl.models.pos_embed import CachedSinCos2d


def scatter_to_grid(visible: torch.Tensor, keep: torch.Tensor, num_patches: int, fill: torch.Tensor) -> torch.Tensor:
    """Visible tokens ``[B, K, D]`` at indices ``keep [B, K]`` into ``fill [B, N, D]`` (returns a new tensor)."""
    return fill.scatter(1, keep[..., None].expand(-1, -1, visible.shape[-1]), visible.to(fill.dtype))


class CNNDecoder2d(nn.Module):
    def __init__(self, dim: int, decoder_dim: int | None = None, layers: int = 6, kernel: int = 3, groups: int = 16,
                 noise_std: float = 0.01):
        super().__init__()
        decoder_dim = decoder_dim or dim
        if dim % groups or decoder_dim % groups:
            raise ValueError(f"decoder channels ({dim}, {decoder_dim}) must be divisible by groups={groups}")
        self.noise_std = noise_std
        self.convs = nn.ModuleList(
            nn.Conv2d(dim if i == 0 else decoder_dim, decoder_dim, kernel, padding=kernel // 2, groups=groups)
            for i in range(layers)
        )
        self.proj = nn.Linear(decoder_dim, dim)

    def forward(self, visible: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int],
                generator: torch.Generator | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
        """visible ``[B, K, D]`` (prefix tokens removed), keep ``[B, K]`` -> predictions ``[B, N, D]`` for all patches
        (``valid [B, N]``: padding positions are held at zero, their predictions are meaningless)."""
        B, K, D = visible.shape
        T, Fp = grid
        N = T * Fp
        noise = torch.randn(B, N, D, generator=generator, device=visible.device, dtype=torch.float32)
        x = scatter_to_grid(visible, keep, N, (noise * self.noise_std).to(visible.dtype))  # [B, N, D]
        real = None if valid is None else valid.reshape(B, 1, T, Fp).to(x.dtype)  # [B, 1, T, F]
        x = x.transpose(1, 2).reshape(B, D, T, Fp)  # time-major tokens -> [B, D, T, F] image
        if real is not None:
            x = x * real
        residual = x
        for conv in self.convs:
            h = conv(x)
            h = F.layer_norm(h.transpose(1, 3), h.shape[1:2]).transpose(1, 3)  # LN over channels, no affine
            h = F.gelu(h)
            x = h + residual if h.shape[1] == residual.shape[1] else h
            if real is not None:
                x = x * real
            residual = x
        x = x.reshape(B, x.shape[1], N).transpose(1, 2)  # [B, N, C]
        return self.proj(x)


class TokenDecoder(CachedSinCos2d, nn.Module):
    def __init__(self, in_dim: int, dim: int = 512, depth: int = 8, num_heads: int = 16, out_dim: int | None = None,
                 mlp_ratio: float = 4.0):
        super().__init__()
        if dim % 4:
            raise ValueError(f"decoder width must be divisible by 4 (sin-cos positions), got {dim}")
        self.dim = dim
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, style="pre") for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, out_dim or in_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, visible: torch.Tensor, keep: torch.Tensor, query: torch.Tensor, grid: tuple[int, int],
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """visible ``[B, K, Din]`` at patch indices ``keep [B, K]``; predict at ``query [B, M]`` -> ``[B, M, out]``
        (``valid [B, N]``: padding tokens and fillers take no part in attention)."""
        B, K, _ = visible.shape
        M = query.shape[1]
        pos = self.positions(grid, visible.device, self.embed.weight.dtype)  # [N, dim]
        ctx = self.embed(visible) + pos[keep]  # [B, K, dim]
        q = self.mask_token.expand(B, M, -1) + pos[query]  # [B, M, dim]
        x = torch.cat([ctx, q], dim=1)
        mask = None
        if valid is not None:
            mask = torch.cat([valid.gather(1, keep), valid.gather(1, query)], dim=1)[:, None, None, :]  # [B,1,1,K+M]
        for blk in self.blocks:
            x, _ = blk(x, mask)
        return self.head(self.norm(x[:, K:]))

"""BEATs' patch embedding: a bias-free ``Conv2d`` to a narrow width, a LayerNorm over each patch vector, then a
Linear to the trunk width (``EncoderConfig.patch_proj_dim``). The LayerNorm sits between two linear maps, so it cannot
be folded into one convolution; the plain encoder uses a single ``Conv2d`` with bias instead.

Input ``[B, 1, T, F]``, output ``[B, D, Tp, Fp]``: the same layout as a ``Conv2d``, so the encoder flattens both alike.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class NormProjPatchEmbed(nn.Module):
    def __init__(self, patch: int, stride: int, inner_dim: int, dim: int, eps: float = 1e-5):
        super().__init__()
        self.conv = nn.Conv2d(1, inner_dim, kernel_size=patch, stride=stride, bias=False)
        self.norm = nn.LayerNorm(inner_dim, eps=eps)
        self.proj = nn.Linear(inner_dim, dim)

    def reset_parameters(self) -> None:
        """BEATs' init: xavier-normal convolution and projection, zero bias, unit LayerNorm."""
        nn.init.xavier_normal_(self.conv.weight)
        nn.init.xavier_normal_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.norm.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.conv(x).permute(0, 2, 3, 1)  # [B, Tp, Fp, inner]
        return self.proj(self.norm(p)).permute(0, 3, 1, 2)  # [B, D, Tp, Fp]

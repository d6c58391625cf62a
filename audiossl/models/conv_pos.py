"""Convolutional positions (wav2vec 2.0 / BEATs): ``x + GELU(conv(x))`` over the 1-D token sequence.

A grouped ``Conv1d`` (kernel ``k``, ``groups`` groups) under weight normalisation over the kernel axis (one gain per
tap: ``w[:, :, j] = g[j] * v[:, :, j] / ||v[:, :, j]||``), zero-padded by ``k // 2`` on both sides; for an even
kernel the last output is dropped (wav2vec's ``SamePad``), so output ``t`` sees inputs ``t - k/2 .. t + k/2 - 1``.
The parameters are kept as ``weight_g [1, 1, k]``, ``weight_v [D, D / groups, k]`` and ``bias [D]`` and the weight is
recomputed in every forward: training runs with the weight-norm parametrisation BEATs trains with, released weights
load as they are stored, and the ONNX graph holds only plain operations.

Tokens are flattened time-major (``t * Fp + f``), so a kernel of 128 spans 16 time patches of 8 frequency patches.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvPositions(nn.Module):
    def __init__(self, dim: int, kernel: int = 128, groups: int = 16):
        super().__init__()
        if dim % groups:
            raise ValueError(f"conv_pos_groups {groups} does not divide embed_dim {dim}")
        if kernel < 2:
            raise ValueError(f"conv_pos kernel must be >= 2, got {kernel}")
        self.kernel, self.groups = kernel, groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.empty(dim, dim // groups, kernel))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BEATs' init: ``v ~ N(0, 4 / (k * D))``, ``g`` = the norm of each tap (the weight starts as ``v``), bias 0."""
        D = self.weight_v.shape[0]
        nn.init.normal_(self.weight_v, std=math.sqrt(4.0 / (self.kernel * D)))
        with torch.no_grad():
            self.weight_g.copy_(self.weight_v.norm(dim=(0, 1), keepdim=True))
        nn.init.zeros_(self.bias)

    def weight(self) -> torch.Tensor:
        """The convolution weight ``[D, D / groups, k]``: ``g * v / ||v||`` per kernel tap."""
        v = self.weight_v
        return v * (self.weight_g / v.norm(dim=(0, 1), keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, N, D]`` -> ``x + GELU(conv(x))`` ``[B, N, D]``."""
        y = F.conv1d(x.transpose(1, 2), self.weight(), self.bias, padding=self.kernel // 2, groups=self.groups)
        if self.kernel % 2 == 0:
            y = y[..., :-1]  # [B, D, N]
        return x + F.gelu(y).transpose(1, 2)

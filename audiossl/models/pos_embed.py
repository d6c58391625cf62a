"""Fixed 2-D sin-cos position embeddings (the MAE / AudioMAE / EAT convention), computable for any grid.

For a (time x freq) patch grid flattened time-major (row ``t * F + f``), the first half of the channels encodes the
*frequency* index and the second half the *time* index -- what MAE's ``np.meshgrid(grid_w, grid_h)`` produces with
``grid_h`` = time. Truncating a table built for a longer time axis gives the same rows, so EAT's stored 768-step table
and these on-the-fly values agree.
"""

from __future__ import annotations

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``positions [M]`` -> ``[M, dim]``: ``[sin(p * w_k), cos(p * w_k)]`` with ``w_k = 1 / 10000^(k / (dim/2))``."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # [dim/2]
    out = positions.to(torch.float64)[:, None] * omega[None]  # [M, dim/2]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid_t: int, grid_f: int) -> torch.Tensor:
    """``[grid_t * grid_f, dim]`` float64, rows in time-major order (``t * grid_f + f``)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {dim}")
    t = torch.arange(grid_t).repeat_interleave(grid_f)  # time index of each row
    f = torch.arange(grid_f).repeat(grid_t)  # frequency index of each row
    return torch.cat([sincos_1d(dim // 2, f), sincos_1d(dim // 2, t)], dim=1)

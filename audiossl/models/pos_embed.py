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


class CachedSinCos2d:
    """Mixin for decoders over a patch grid: ``positions(grid, device, dtype)`` -> ``sincos_2d(self.dim, *grid)``,
    built once per grid, device and dtype."""

    dim: int

    def positions(self, grid: tuple[int, int], device, dtype) -> torch.Tensor:
        cache = self.__dict__.setdefault("_pos_cache", {})
        key = (grid, device, dtype)
        if key not in cache:
            cache[key] = sincos_2d(self.dim, *grid).to(device=device, dtype=dtype)
        return cache[key]


def sincos_2d_traceable(dim: int, grid_t, grid_f, device=None) -> torch.Tensor:
    """``sincos_2d`` built from broadcasts of ``arange(grid_t)`` / ``arange(grid_f)`` (float64, same values), so a
    traced graph keeps ``grid_t`` symbolic (ONNX export with a dynamic time length). ``[grid_t * grid_f, dim]``."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {dim}")
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half // 2, dtype=torch.float64, device=device) / (half / 2.0))  # [half/2]
    t = torch.arange(grid_t, device=device).to(torch.float64)[:, None] * omega  # [grid_t, half/2]
    f = torch.arange(grid_f, device=device).to(torch.float64)[:, None] * omega  # [grid_f, half/2]
    emb_t = torch.cat([torch.sin(t), torch.cos(t)], dim=1)[:, None, :].expand(-1, grid_f, -1)  # [gt, gf, half]
    emb_f = torch.cat([torch.sin(f), torch.cos(f)], dim=1)[None, :, :].expand(grid_t, -1, -1)  # [gt, gf, half]
    return torch.cat([emb_f, emb_t], dim=2).reshape(-1, dim)  # rows t * grid_f + f


def sincos_bat(dim: int, rows: int, width: int = 64) -> torch.Tensor:
    """BAT's fixed table (``get_2d_sincos_pos_embed_flexible(dim, (8, 64))``): ``[rows, dim]`` float64 whose row ``i``
    is ``[sincos_1d(i mod width) | sincos_1d(i div width)]``, each half ``dim / 2`` wide.

    BAT builds it for a grid of 8 "rows" by 64 "columns" but flattens its time-major patches (``i = 8 t + f``) into
    it, so for token ``(t, f)`` the first half encodes ``8 (t mod 8) + f`` and the second ``t div 8``: not the (time,
    freq) layout of ``sincos_2d`` (they differ by up to 2.0). A prefix of the table serves shorter inputs.
    """
    if dim % 4:
        raise ValueError(f"BAT's sin-cos table needs a dimension divisible by 4, got {dim}")
    i = torch.arange(rows)
    return torch.cat([sincos_1d(dim // 2, i % width), sincos_1d(dim // 2, torch.div(i, width, rounding_mode="floor"))],
                     dim=1)

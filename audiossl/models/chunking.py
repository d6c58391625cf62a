"""BAT's handling of inputs longer than its position table: cut the patch grid into windows of ``chunk`` time
patches, run every window through the trunk on its own (its own prefix tokens, positions restarting at 0), then put
the windows back together: prefix tokens (CLS) averaged over the windows, patch tokens concatenated along time.

The windows of a batch are folded into the batch dimension and run in one pass: a last, shorter window is padded to
``chunk`` time patches and its padding is masked out of attention, which computes what running it alone would (up to
float rounding). A window that holds only padding of the clip (``valid``) takes no part in the CLS average, so a
clip's result does not depend on how much padding follows it. Pure functions over ``[B, N, D]`` token tensors in
time-major patch order (index ``t * grid_f + f``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def split_chunks(patches: torch.Tensor, valid: torch.Tensor | None, grid_f: int, chunk: int):
    """``patches [B, N, D]`` (``N = grid_t * grid_f``), ``valid [B, N]`` or None -> (windows ``[B * C, chunk * grid_f,
    D]``, their validity ``[B * C, chunk * grid_f]`` or None, windows holding real audio ``[B, C]`` bool, ``C``)."""
    B, N, D = patches.shape
    grid_t = N // grid_f
    C = (grid_t + chunk - 1) // chunk
    pad = (C * chunk - grid_t) * grid_f  # patches appended to fill the last window
    windows = F.pad(patches, (0, 0, 0, pad)).reshape(B * C, chunk * grid_f, D)
    if valid is None and not _tracing() and pad == 0:
        return windows, None, torch.ones(B, C, dtype=torch.bool, device=patches.device), C
    v = torch.ones(B, N, dtype=torch.bool, device=patches.device) if valid is None else valid
    v = F.pad(v, (0, pad), value=False).reshape(B, C, chunk * grid_f)
    return windows, v.reshape(B * C, chunk * grid_f), v.any(dim=2), C


def merge_chunks(x: torch.Tensor, batch: int, num_chunks, num_prefix: int, num_patches,
                 real: torch.Tensor) -> torch.Tensor:
    """Window outputs ``[B * C, P + L, D]`` -> ``[B, P + N, D]``: prefix tokens averaged over the windows that hold
    real audio (``real [B, C]``), patch tokens concatenated and cut to the ``N`` patches of the input."""
    D = x.shape[-1]
    L = x.shape[1] - num_prefix
    patches = x[:, num_prefix:].reshape(batch, num_chunks * L, D)[:, :num_patches]
    if not num_prefix:
        return patches
    w = real.to(x.dtype)[:, :, None, None]  # [B, C, 1, 1]
    pre = x[:, :num_prefix].reshape(batch, num_chunks, num_prefix, D)
    pre = (pre * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)  # [B, P, D]
    return torch.cat([pre, patches], dim=1)


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()

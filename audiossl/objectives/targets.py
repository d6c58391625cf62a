"""Teacher targets for latent-regression objectives (data2vec 2.0 / EAT / SSLAM), as pure functions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def masked_instance_norm(x: torch.Tensor, valid: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """Normalise each channel of ``x [B, N, D]`` over the tokens of its row (``F.instance_norm``: biased variance,
    ``eps``), counting only the tokens where ``valid [B, N]`` is True; padding rows come out finite but meaningless."""
    if valid is None:
        return F.instance_norm(x.transpose(1, 2), eps=eps).transpose(1, 2)
    w = valid.to(x.dtype)[..., None]  # [B, N, 1]
    n = w.sum(dim=1, keepdim=True).clamp_min(1.0)
    mean = (x * w).sum(dim=1, keepdim=True) / n  # [B, 1, D]
    var = ((x - mean) ** 2 * w).sum(dim=1, keepdim=True) / n
    return (x - mean) / torch.sqrt(var + eps)


def masked_mean(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean over tokens of ``x [B, N, D]`` -> ``[B, D]``, over the ``valid [B, N]`` tokens only."""
    if valid is None:
        return x.mean(dim=1)
    w = valid.to(x.dtype)[..., None]
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def layer_targets(
    layers: list[torch.Tensor], top_k: int, instance_norm: bool = True, layer_norm: bool = True,
    valid: torch.Tensor | None = None, eps: float = 1e-5,
) -> torch.Tensor:
    """Average of the top ``top_k`` per-layer outputs ``[B, N, D]`` (prefix tokens already removed).

    Each layer is instance-normalised over the token axis (per sample, per channel; ``F.instance_norm``, eps 1e-5),
    the layers are averaged in fp32, and the average is layer-normalised over channels without affine parameters —
    EAT's ``make_targets`` with ``instance_norm_target_layer=True, layer_norm_targets=True``. Which per-layer outputs
    are given is the caller's choice (EAT: FFN outputs; BAT: block outputs, ``eps`` 1e-6 in both norms). With
    ``valid [B, N]``
    the instance norm counts real tokens only, so padding does not change the real tokens' targets.
    Returns ``[B, N, D]`` float32.
    """
    if not 1 <= top_k <= len(layers):
        raise ValueError(f"top_k must be in [1, {len(layers)}], got {top_k}")
    picked = layers[-top_k:]
    y = None
    for t in picked:
        t = t.float()
        if instance_norm:
            t = masked_instance_norm(t, valid, eps)  # normalise each channel over (real) tokens
        y = t if y is None else y + t
    y = y / len(picked)
    if layer_norm:
        y = F.layer_norm(y, y.shape[-1:], eps=eps)
    return y


def d2v_regression(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """data2vec's ``d2v_loss`` with ``loss_beta=0``: element-wise squared error scaled by ``1/sqrt(D)``.

    pred, target: ``[..., D]``. Returns the same shape (fp32); callers sum it.
    """
    pred = pred.float()
    return (pred - target.float()).pow(2) * (1.0 / math.sqrt(pred.shape[-1]))


def feature_std(x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Collapse diagnostic (data2vec ``compute_var``): mean over channels of the per-channel std across samples
    (``valid``, shaped like ``x`` without its last axis: only those rows)."""
    x = x.detach().float()
    x = x[valid] if valid is not None else x.reshape(-1, x.shape[-1])
    if x.shape[0] < 2:
        return torch.zeros((), device=x.device)
    return torch.sqrt(x.var(dim=0) + 1e-6).mean()

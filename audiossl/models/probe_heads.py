"""Probe heads over every block of a frozen encoder (BAT's ``models/heads.py``, ``reference/methods-bat.md`` §4). Pure
torch, any audiossl encoder (post- or pre-LN, with or without a CLS, padded or not). The loss BAT trains them with on
AudioSet is ``audiossl.tasks.asymmetric_loss``.

Every head takes the per-block outputs ``layers`` (a list of ``L`` tensors ``[B, P + N, D]``: ``P`` prefix tokens,
then ``N`` patches; ``AudioEncoder.forward_tokens(..., return_layers=True)``) and the padding mask ``valid [B, N]``
(True = real patch, ``None`` = no padding). Minima, maxima and means run over real patches only. An encoder without
prefix tokens (BEATs) uses the mean of its real patches wherever a head reads the CLS.

* ``cgp`` — Convex Gated Probing: each token of each block L2-normalised; one convex layer mix ``a = softmax(w)``
  (``w`` initialised to ones) shared by patches and CLS, ``X = sum_l a_l x_l``, ``c = sum_l a_l c_l``; ``K``
  prototypes (10,000; ``N(0, 0.02^2)``) L2-normalised at every call; per prototype ``[min over patches of X.p, c.p,
  max over patches of X.p]`` (interleaved: ``k0 min, k0 cls, k0 max, k1 ...``; without a CLS ``[min, mean, max]``)
  -> dropout -> ``Linear(3K -> C)``.
* ``lcgp`` — a softmax mix (``w`` initialised to zeros) of the *raw* CLS of every block -> LayerNorm -> dropout ->
  Linear.
* ``h2t`` — Head2Toe: the CLS of every block concatenated ``[B, L * D]`` -> LayerNorm -> dropout -> Linear, plus the
  group-lasso penalty ``sqrt(C) * sum_j ||W[:, j]||_2`` (weighted by the trainer, BAT 1e-4).
* ``linear`` (BAT's linear probe: final CLS -> LayerNorm -> dropout -> Linear) is the classifier's own
  ``ClassifierHead`` and lives in ``models/classifier.py``.

Parameter names the optimiser exempts from weight decay (as BAT): ``layer_logits`` and ``prototypes``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LAYER_PROBES = ("cgp", "lcgp", "h2t")
NO_DECAY = ("layer_logits", "prototypes")


def clip_token(h: torch.Tensor, num_prefix: int, valid: torch.Tensor | None) -> torch.Tensor:
    """``[B, P + N, D]`` -> ``[B, D]``: the CLS (mean of the prefix tokens), or without any the mean of the real
    patches."""
    if num_prefix:
        return h[:, :num_prefix].mean(dim=1)
    if valid is None:
        return h.mean(dim=1)
    w = valid.to(h.dtype)[..., None]
    return (h * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def _l2_normalise(x: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``F.normalize(x, dim=-1)`` (eps 1e-12); in place when allowed (a frozen encoder's outputs: no copy to keep)."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12)
    return x.div_(norm) if inplace else x / norm


class ConvexGatedProbe(nn.Module):
    def __init__(self, dim: int, num_layers: int, num_classes: int, num_prototypes: int = 10_000,
                 dropout: float = 0.2, use_cls: bool = True):
        super().__init__()
        self.use_cls = use_cls
        self.layer_logits = nn.Parameter(torch.ones(num_layers))
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, dim) * 0.02)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(3 * num_prototypes, num_classes)  # PyTorch's default init, as BAT's fc

    def similarities(self, layers: list[torch.Tensor], num_prefix: int, valid: torch.Tensor | None = None,
                     inplace: bool = False) -> torch.Tensor:
        """The ``[B, 3K]`` prototype features (before dropout). ``inplace``: normalise ``layers`` in place."""
        if len(layers) != self.layer_logits.numel():
            raise ValueError(f"the probe mixes {self.layer_logits.numel()} blocks, the encoder gave {len(layers)}")
        a = torch.softmax(self.layer_logits, dim=0)  # [L] convex weights
        mix = None
        for a_l, h in zip(a, layers):  # X = sum_l a_l * normalise(x_l), for patches and prefix alike
            term = a_l * _l2_normalise(h, inplace)
            mix = term if mix is None else mix + term
        P = num_prefix
        patches = mix[:, P:]  # [B, N, D], norm <= 1 (not renormalised)
        protos = F.normalize(self.prototypes, dim=-1)  # [K, D]
        s = patches @ protos.T.to(patches.dtype)  # [B, N, K]
        if valid is None:
            lo, hi = s.min(dim=1).values, s.max(dim=1).values  # [B, K]
        else:
            real = valid[..., None]  # [B, N, 1]
            lo = s.masked_fill(~real, torch.inf).min(dim=1).values
            hi = s.masked_fill(~real, -torch.inf).max(dim=1).values
        if self.use_cls and P:
            mid = mix[:, :P].mean(dim=1) @ protos.T.to(mix.dtype)  # [B, K]
        elif valid is None:
            mid = s.mean(dim=1)
        else:
            w = valid.to(s.dtype)[..., None]
            mid = (s * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
        return torch.stack([lo, mid, hi], dim=-1).reshape(s.shape[0], -1)  # [B, 3K]: k0 min, k0 mid, k0 max, ...

    def forward(self, layers, num_prefix: int, valid=None, inplace: bool = False) -> torch.Tensor:
        return self.linear(self.dropout(self.similarities(layers, num_prefix, valid, inplace)))

    def penalty(self) -> torch.Tensor:
        return self.linear.weight.new_zeros(())


class LayerMixProbe(nn.Module):
    """LCGP: softmax-weighted sum of every block's raw CLS -> LayerNorm -> dropout -> Linear."""

    def __init__(self, dim: int, num_layers: int, num_classes: int, dropout: float = 0.2, norm_eps: float = 1e-6):
        super().__init__()
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, layers, num_prefix: int, valid=None, inplace: bool = False) -> torch.Tensor:
        a = torch.softmax(self.layer_logits, dim=0)
        x = sum(a_l * clip_token(h, num_prefix, valid) for a_l, h in zip(a, layers))  # [B, D]
        return self.linear(self.dropout(self.norm(x)))

    def penalty(self) -> torch.Tensor:
        return self.linear.weight.new_zeros(())


class Head2ToeProbe(nn.Module):
    """Head2Toe: every block's CLS concatenated -> LayerNorm -> dropout -> Linear; ``penalty`` is the group lasso."""

    def __init__(self, dim: int, num_layers: int, num_classes: int, dropout: float = 0.2, norm_eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim * num_layers, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(dim * num_layers, num_classes)

    def forward(self, layers, num_prefix: int, valid=None, inplace: bool = False) -> torch.Tensor:
        x = torch.cat([clip_token(h, num_prefix, valid) for h in layers], dim=-1)  # [B, L * D]
        return self.linear(self.dropout(self.norm(x)))

    def penalty(self) -> torch.Tensor:
        """``sqrt(C) * sum_j ||W[:, j]||_2``: one group per input feature (BAT's ``layer_wise_lasso=False``)."""
        w = self.linear.weight
        return torch.linalg.vector_norm(w, dim=0).sum() * math.sqrt(w.shape[0])


def build_layer_probe(kind: str, dim: int, num_layers: int, num_classes: int, num_prototypes: int = 10_000,
                      dropout: float = 0.2, has_cls: bool = True, norm_eps: float = 1e-6) -> nn.Module:
    if kind == "cgp":
        return ConvexGatedProbe(dim, num_layers, num_classes, num_prototypes, dropout, use_cls=has_cls)
    if kind == "lcgp":
        return LayerMixProbe(dim, num_layers, num_classes, dropout, norm_eps)
    if kind == "h2t":
        return Head2ToeProbe(dim, num_layers, num_classes, dropout, norm_eps)
    raise ValueError(f"probe must be 'linear' or one of {LAYER_PROBES}, got {kind!r}")

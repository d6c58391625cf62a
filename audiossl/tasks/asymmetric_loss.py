"""The asymmetric multi-label loss (Ridnik et al., ICCV 2021), as BAT probes AudioSet with it."""

from __future__ import annotations

import torch


def asymmetric_loss(logits: torch.Tensor, target: torch.Tensor, gamma_neg: float = 1.0, gamma_pos: float = 0.0,
                    clip: float = 0.0, eps: float = 1e-8) -> torch.Tensor:
    """Asymmetric loss (Ridnik et al.; BAT's ``AsymmetricLossMultiLabel``, reduction mean over all ``B x C``):
    ``-mean(w * [y log p + (1 - y) log(1 - p_m)])`` with ``p = sigmoid(logits)``, ``p_m = min(1, 1 - p + clip)``
    and the focusing weight ``w = (1 - pt)^gamma`` (``pt = p`` for positives, ``p_m`` for negatives; ``gamma_pos`` /
    ``gamma_neg``) held out of the gradient. BAT probes AudioSet with ``gamma_neg 1, gamma_pos 0, clip 0``."""
    p = torch.sigmoid(logits.float())
    y = target.float()
    p_neg = 1.0 - p
    if clip and clip > 0:
        p_neg = (p_neg + clip).clamp(max=1.0)
    loss = y * torch.log(p.clamp(min=eps)) + (1 - y) * torch.log(p_neg.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.no_grad():
            pt = p * y + p_neg * (1 - y)
            w = torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
        loss = loss * w
    return -loss.mean()

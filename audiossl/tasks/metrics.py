"""Evaluation metrics as the leaderboards compute them.

* ``average_precision``: per class, scikit-learn's ``average_precision_score`` (step-wise
  ``sum_n (R_n - R_{n-1}) P_n`` over distinct score thresholds), via torchmetrics.
* ``mAP``: mean of the per-class APs over the classes that have at least one positive. A class without positives
  has no defined AP and is left out. The references differ here: EAT (``tasks/finetuning.py``, ``evaluation/eval.py``)
  takes ``np.nanmean`` of scikit-learn's per-class APs, but scikit-learn (1.3.2, EAT's pin, and later) returns 0.0
  with a warning, not NaN, for a class without positives, so EAT counts such a class as 0 -- that number is
  ``mAP_all_classes``; AST (``traintest.py``) takes ``np.mean`` of its per-class stats, and its ``roc_auc_score`` call
  would raise on such a class. On AudioSet's eval set every class has positives and all of these agree.
* ``mAUC`` and ``d_prime = sqrt(2) * Phi^-1(AUC)`` (AST's definition), averaged over classes with both labels.
* ``accuracy``: top-1; for multi-label targets, whether the top-scoring class is one of the positives.
"""

from __future__ import annotations

import math

import torch
from torchmetrics.functional.classification import binary_auroc, binary_average_precision


def _binary(target: torch.Tensor) -> torch.Tensor:
    return (target > 0.5).long()


def per_class_ap(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``scores, targets [N, C]`` -> ``[C]`` average precision; NaN for a class with no positives."""
    scores = scores.float()
    t = _binary(targets)
    out = torch.full((scores.shape[1],), float("nan"), dtype=torch.float64)
    for c in range(scores.shape[1]):
        if t[:, c].sum() > 0:
            out[c] = float(binary_average_precision(scores[:, c], t[:, c], thresholds=None))
    return out


def per_class_auc(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[C]`` ROC AUC; NaN for a class whose targets are all one value."""
    scores = scores.float()
    t = _binary(targets)
    out = torch.full((scores.shape[1],), float("nan"), dtype=torch.float64)
    for c in range(scores.shape[1]):
        pos = int(t[:, c].sum())
        if 0 < pos < t.shape[0]:
            out[c] = float(binary_auroc(scores[:, c], t[:, c], thresholds=None))
    return out


def d_prime(auc: float) -> float:
    """``sqrt(2) * Phi^-1(auc)`` (AST, PANNs)."""
    if not 0.0 < auc < 1.0:
        return float("inf") if auc >= 1.0 else float("-inf")
    return math.sqrt(2.0) * float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(auc, dtype=torch.float64)))


def _nanmean(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if len(x) else float("nan")


def classification_metrics(scores: torch.Tensor, targets: torch.Tensor) -> dict:
    """All metrics for scores ``[N, C]`` and targets (multi-hot ``[N, C]`` or class indices ``[N]``)."""
    scores = scores.detach().cpu().float()
    targets = targets.detach().cpu()
    N, C = scores.shape
    if targets.dim() == 1:  # class indices -> one-hot
        targets = torch.nn.functional.one_hot(targets.long(), C).float()
    ap = per_class_ap(scores, targets)
    auc = per_class_auc(scores, targets)
    m_auc = _nanmean(auc)
    top1 = scores.argmax(dim=1)
    correct = targets[torch.arange(N), top1] > 0.5
    return {
        "mAP": _nanmean(ap),
        "mAP_all_classes": float(torch.nan_to_num(ap, nan=0.0).mean()) if C else float("nan"),
        "mAUC": m_auc,
        "d_prime": d_prime(m_auc) if not math.isnan(m_auc) else float("nan"),
        "accuracy": float(correct.float().mean()) if N else float("nan"),
        "num_clips": int(N),
        "num_classes": int(C),
        "num_classes_with_positives": int((~torch.isnan(ap)).sum()),
        "per_class_ap": ap.tolist(),
        "per_class_auc": auc.tolist(),
    }

"""Batch statistics used by the trainers: normalisation and explained variance."""

from __future__ import annotations

import torch
from torch import Tensor


def normalize(x: Tensor, eps: float = 1e-8, mask: Tensor | None = None) -> Tensor:
    """Zero mean, unit (unbiased) std, as CleanRL and SB3 normalise advantages.

    With a boolean ``mask`` the moments come from the selected entries only, and the others are returned as 0.
    """
    if mask is None:
        return (x - x.mean()) / (x.std() + eps)
    weight = mask.to(x.dtype)
    n = weight.sum()
    mean = (x * weight).sum() / n.clamp_min(1.0)
    var = ((x - mean).pow(2) * weight).sum() / (n - 1.0).clamp_min(1.0)
    return (x - mean) / (var.sqrt() + eps) * weight


def explained_variance(prediction: Tensor, target: Tensor) -> Tensor:
    """``1 - Var[target - prediction] / Var[target]``; NaN when the target is constant or has under 2 elements."""
    if target.numel() < 2:
        return torch.tensor(torch.nan, device=target.device)
    var_target = target.var()
    return torch.where(var_target > 0, 1.0 - (target - prediction).var() / var_target, torch.nan)

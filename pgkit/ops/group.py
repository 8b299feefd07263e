"""Group-relative advantages (GRPO): each reward measured against the other members of its group."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from pgkit.ops._arrays import as_tensor, back, cpu_arrays, give_back, is_torch

Baseline = Literal["mean", "median", "min"]
_KINDS = {"mean": 0, "median": 1, "min": 2}
"""Baselines as :func:`pgkit.ops.kernels.group_advantages_rows` numbers them."""
Scale = Literal["group", "batch", "none"]


def _row_mean_std(x: Tensor, correction: int) -> tuple[Tensor, Tensor]:
    """Per-row mean and std as ``[rows, 1]`` (by sums: ``torch.std`` over short rows is many times slower)."""
    size = x.shape[1]
    mean = x.sum(dim=1, keepdim=True) / size
    centred = x - mean
    var = (centred * centred).sum(dim=1, keepdim=True) / max(size - correction, 1)
    return mean, var.sqrt()


def group_baseline(rewards: Tensor, kind: str) -> Tensor:
    """Each group's baseline, shape ``[groups, 1]``, for rewards of shape ``[groups, group_size]``.

    The median of an even-sized group is the mean of its two middle values (as numpy's). A NaN anywhere in a group
    makes its baseline NaN, whatever the kind; so does an empty group (``group_size`` 0).
    """
    if kind not in ("mean", "median", "min"):
        raise ValueError(f"baseline_type must be 'mean', 'median' or 'min', got {kind!r}")
    size = rewards.shape[1]
    if size == 0:
        return rewards.new_full((rewards.shape[0], 1), torch.nan)
    if kind == "mean":
        return rewards.mean(dim=1, keepdim=True)
    if kind == "median":
        ordered = rewards.sort(dim=1).values
        middle = (ordered[:, (size - 1) // 2] + ordered[:, size // 2]) / 2
        has_nan = rewards.isnan().any(dim=1)
        return torch.where(has_nan, torch.nan, middle).unsqueeze(1)
    return rewards.amin(dim=1, keepdim=True)


def group_advantages(rewards: Tensor, baseline: Baseline = "mean", scale: Scale = "group", eps: float = 1e-4) -> Tensor:
    """GRPO advantages ``(r - baseline) / (std + eps)`` for rewards of shape ``[groups, group_size]`` (as TRL).

    ``scale``: ``group`` divides by each group's std, ``batch`` by the std of all rewards, ``none`` not at all
    (Dr. GRPO). The std is the unbiased one, as ``torch.std`` in TRL; a group of one has advantage 0.
    """
    advantage = rewards - group_baseline(rewards, baseline)
    if scale == "none":
        return advantage
    if scale == "group":
        std = _row_mean_std(rewards, correction=1)[1]
    elif scale == "batch":
        std = rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    return advantage / (std + eps)


def compute_group_advantages(rewards: Any, baseline_type: str = "mean", normalize: bool = True) -> Any:
    """Group-relative advantages as stateset-rl-core's ``compute_group_advantages``.

    ``rewards`` has shape ``[num_groups, group_size]``; the result is ``r - baseline``, flattened row by row to
    ``[num_groups * group_size]`` (as stateset-rl-core returns it). With ``normalize`` each group's advantages are
    centred and divided by ``std + 1e-8`` (population std) when that std exceeds ``1e-8``, and left as they are
    otherwise (a NaN std, from an infinite reward, included); centring makes the baseline irrelevant then. Unlike
    stateset-rl-core, an unknown ``baseline_type`` is an error (it falls back to the mean), and a NaN makes its whole
    group NaN for every baseline (its ``min`` skips NaN).
    """
    arrays = cpu_arrays(rewards)
    if arrays is not None and baseline_type in _KINDS:  # one compiled pass (pgkit.ops.kernels)
        x = arrays[0]
        if x.ndim != 2:
            raise ValueError(f"rewards must be 2-D [num_groups, group_size], got shape {x.shape}")
        if x.shape[1] > 0:
            from pgkit.ops.kernels import group_advantages_rows

            out = np.empty(x.shape, x.dtype)
            group_advantages_rows(x, _KINDS[baseline_type], normalize, out)
            return back(out.reshape(-1), is_torch(rewards))
    r = as_tensor(rewards)
    if r.ndim != 2:
        raise ValueError(f"rewards must be 2-D [num_groups, group_size], got shape {tuple(r.shape)}")
    advantage = r - group_baseline(r, baseline_type)
    if normalize and r.shape[1] > 0:
        mean, std = _row_mean_std(advantage, correction=0)
        # groups whose rewards (nearly) all agree, or whose std is NaN, are left as they are
        advantage = torch.where(std > 1e-8, (advantage - mean) / (std + 1e-8), advantage)
    return give_back(advantage.reshape(-1), is_torch(rewards))


def relative_scores(returns: Tensor) -> Tensor:
    """Normalised rank within each group, ``[P, G] -> [P, G]`` in ``[0, 1]``: 0 the worst, 1 the best; ties share
    their mean rank."""
    above = (returns.unsqueeze(2) > returns.unsqueeze(1)).sum(2).to(returns.dtype)
    ties = (returns.unsqueeze(2) == returns.unsqueeze(1)).sum(2).to(returns.dtype) - 1
    return (above + ties / 2) / max(returns.shape[1] - 1, 1)


def pareto_scores(objectives: Tensor) -> Tensor:
    """Pareto rank within each group for objectives ``[P, G, K]`` (all maximised), ``-> [P, G]`` in ``[0, 1]``.

    Fonseca-Fleming ranking: ``1 - (members that dominate this one) / (G - 1)``, so every non-dominated member
    scores 1. ``j`` dominates ``i`` when it is at least as good in every objective and better in one.
    """
    i_obj, j_obj = objectives.unsqueeze(2), objectives.unsqueeze(1)  # [P, i, 1, K], [P, 1, j, K]
    dominates = (j_obj >= i_obj).all(-1) & (j_obj > i_obj).any(-1)  # [P, i, j]: j dominates i
    return 1.0 - dominates.sum(2).to(objectives.dtype) / max(objectives.shape[1] - 1, 1)


def leave_one_out_advantages(rewards: Tensor) -> Tensor:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024): each reward minus the mean of the *other* members of its
    group, ``[groups, group_size]``; ``r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean)``."""
    size = rewards.shape[1]
    return (rewards - rewards.mean(dim=1, keepdim=True)) * (size / max(size - 1, 1))

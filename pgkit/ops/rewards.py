"""Reward normalisation, clipping and statistics, as stateset-rl-core's reward functions."""

from __future__ import annotations

from typing import Any

import torch

from pgkit.ops._arrays import as_tensor, give_back, is_torch, scalar_back
from pgkit.ops.welford import merge_moments


def normalize_rewards(
    rewards: Any, running_mean: Any = 0.0, running_var: Any = 1.0, count: int = 0, epsilon: float = 1e-8
) -> tuple[Any, Any, Any, int]:
    """Fold ``rewards`` into running moments (Welford/Chan), then standardise them with the updated moments.

    Returns ``(normalized, mean, var, count)``: ``(rewards - mean) / sqrt(var + epsilon)`` with the population
    variance. With ``count == 0`` the prior moments are ignored; an empty batch returns them unchanged. For tensor
    input the mean and variance come back as 0-d tensors (no device sync); for numpy input, as floats.
    """
    r = as_tensor(rewards)
    torch_out = is_torch(rewards)
    n = r.numel()
    if n == 0:
        return give_back(r.clone(), torch_out), running_mean, running_var, count
    prior_mean = torch.as_tensor(running_mean, dtype=r.dtype, device=r.device)
    prior_var = torch.as_tensor(running_var, dtype=r.dtype, device=r.device)
    batch_var, batch_mean = torch.var_mean(r, correction=0)
    mean, var, total = merge_moments(prior_mean, prior_var, count, batch_mean, batch_var, n)
    normalized = (r - mean).mul_((var + epsilon).rsqrt())
    return give_back(normalized, torch_out), scalar_back(mean, torch_out), scalar_back(var, torch_out), int(total)


def clip_rewards(rewards: Any, min_val: float, max_val: float) -> Any:
    """Clamp every reward into ``[min_val, max_val]`` (NaN stays NaN). ``min_val > max_val`` is a ``ValueError``."""
    if min_val > max_val:
        raise ValueError(f"clip_rewards needs min_val <= max_val, got {min_val} > {max_val}")
    return give_back(as_tensor(rewards).clamp(min_val, max_val), is_torch(rewards))


clip_rewards_py = clip_rewards
"""The name stateset-rl-core's Python module actually exports."""


def compute_reward_statistics(rewards: Any) -> dict[str, Any]:
    """``mean``, ``std`` (population), ``min``, ``max``, ``median`` and ``count`` of a batch of rewards.

    The median of an even count is the mean of the middle two. Values are floats for numpy input and 0-d tensors
    for tensor input. Unlike stateset-rl-core, an empty batch also reports ``count`` (0) and NaN input gives NaN
    statistics instead of a panic.
    """
    r = as_tensor(rewards).reshape(-1)
    torch_out = is_torch(rewards)
    if r.numel() == 0:
        zero = r.new_zeros(())
        return {k: scalar_back(zero, torch_out) for k in ("mean", "std", "min", "max", "median", "count")}
    std, mean = torch.std_mean(r, correction=0)
    median = (r.median() - (-r).median()) / 2  # the lower and the upper middle value: no full sort
    stats = {"mean": mean, "std": std, "min": r.min(), "max": r.max(), "median": median}
    if r.isnan().any():
        stats = {k: torch.full_like(v, torch.nan) for k, v in stats.items()}
    stats["count"] = r.new_tensor(float(r.numel()))
    return {k: scalar_back(v, torch_out) for k, v in stats.items()}

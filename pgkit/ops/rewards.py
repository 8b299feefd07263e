"""Reward normalisation, clipping and statistics, as stateset-rl-core's reward functions."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pgkit.ops._arrays import as_tensor, back, cpu_arrays, give_back, is_torch, scalar_back


def _moments(r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(mean, var / scale**2, scale)`` of a non-empty 1-D tensor: its mean and population variance.

    The mean is IEEE's ``sum / n``, so order does not matter: ``inf`` for ``[inf, 1]`` and ``[1, inf]`` alike, NaN
    where ``+inf`` meets ``-inf`` or with a NaN. It does not overflow on finite data: everything is first divided by
    ``scale``, the power of two at or below the largest magnitude (exactly, so the digits are those of the plain
    formula). The variance is two-pass, and NaN when the mean is not finite (``inf - inf``). No device sync.
    """
    big = r.abs().amax()
    scale = torch.where((big > 0) & (big < math.inf), torch.exp2(torch.floor(torch.log2(big))), 1.0)
    x = r / scale
    mean = x.mean()
    var = torch.where(mean.isfinite(), (x - mean).square().mean(), torch.nan)
    return mean * scale, var, scale


def _merge(prior_mean: Any, prior_var: Any, count: int, batch_mean: Any, batch_var: Any, scale: Any, n: int):
    """Chan's merge of prior moments with a batch's (``batch_var`` as :func:`_moments` gives it, over
    ``scale**2``): ``(mean, var, count)``, on tensors or numpy scalars alike (operators only). The mean is a
    weighted sum, not a difference, so ``inf`` and a finite prior give ``inf``; callers make the variance NaN when
    the mean is not finite."""
    total = count + n
    mean = prior_mean * (count / total) + batch_mean * (n / total)
    delta = batch_mean - prior_mean
    m2 = prior_var * count + batch_var * scale * scale * n + delta * (delta * (count * n / total))
    return mean, m2 / total, total


def normalize_rewards(
    rewards: Any, running_mean: Any = 0.0, running_var: Any = 1.0, count: int = 0, epsilon: float = 1e-8
) -> tuple[Any, Any, Any, int]:
    """Fold ``rewards`` into running moments (Chan's merge), then standardise them with the updated moments.

    Returns ``(normalized, mean, var, count)``: ``(rewards - mean) / sqrt(var + epsilon)`` with the population
    variance. With ``count == 0`` the prior moments get weight 0 (a NaN or infinite prior still makes the result
    NaN, as in stateset-rl-core); an empty batch returns them unchanged; a negative ``count`` is a ``ValueError``.
    The mean is the IEEE mean of all the data (infinite if an infinity is among them, in any order), and the
    variance is NaN when the mean is not finite. For tensor input the mean and variance come back as 0-d tensors
    in the tensor's dtype (no device sync); for numpy input, as floats.
    """
    if count < 0:
        raise ValueError(f"normalize_rewards needs count >= 0, got {count}")
    torch_out = is_torch(rewards)
    arrays = cpu_arrays(rewards)
    if arrays is not None and arrays[0].size > 0:  # compiled single-thread passes (pgkit.ops.kernels)
        return _normalize_loop(arrays[0], running_mean, running_var, count, epsilon, torch_out)
    r = as_tensor(rewards)
    n = r.numel()
    if n == 0:
        return give_back(r.clone(), torch_out), running_mean, running_var, count
    prior_mean = torch.as_tensor(running_mean, dtype=r.dtype, device=r.device)
    prior_var = torch.as_tensor(running_var, dtype=r.dtype, device=r.device)
    batch_mean, batch_var, scale = _moments(r.reshape(-1))
    mean, merged_var, total = _merge(prior_mean, prior_var, count, batch_mean, batch_var, scale, n)
    var = torch.where(mean.isfinite(), merged_var, torch.nan)
    normalized = (r - mean).mul_((var + epsilon).rsqrt())
    return give_back(normalized, torch_out), scalar_back(mean, torch_out), scalar_back(var, torch_out), int(total)



def _normalize_loop(
    x: np.ndarray, running_mean: Any, running_var: Any, count: int, epsilon: float, torch_out: bool
) -> tuple[Any, Any, Any, int]:
    """:func:`normalize_rewards` on CPU: the moments and the standardisation as compiled loops, the merge of the
    moments in float64 scalars, with the same IEEE rules as the tensor code."""
    from pgkit.ops.kernels import scaled_moments, standardize_flat

    flat = np.ascontiguousarray(x).reshape(-1)
    n = flat.shape[0]
    batch_mean, batch_var, scale = scaled_moments(flat)
    prior_mean, prior_var = np.float64(running_mean), np.float64(running_var)
    with np.errstate(all="ignore"):  # IEEE results (inf, NaN) are the point, not warnings
        mean, merged_var, total = _merge(prior_mean, prior_var, count, batch_mean, batch_var, scale, n)
        var = merged_var if np.isfinite(mean) else np.float64(np.nan)
        out = np.empty_like(flat)
        standardize_flat(flat, float(mean), float(var + epsilon), out)
    normalized = out.reshape(x.shape)
    if torch_out:
        dtype = torch.from_numpy(flat[:0]).dtype
        return (torch.from_numpy(normalized), torch.tensor(float(mean), dtype=dtype),
                torch.tensor(float(var), dtype=dtype), int(total))
    return normalized, float(mean), float(var), int(total)

def clip_rewards(rewards: Any, min_val: float, max_val: float) -> Any:
    """Clamp every reward into ``[min_val, max_val]`` (NaN stays NaN).

    ``min_val > max_val`` or a NaN bound is a ``ValueError``, even for an empty batch.
    """
    if not min_val <= max_val:
        raise ValueError(f"clip_rewards needs min_val <= max_val (and neither NaN), got {min_val} and {max_val}")
    arrays = cpu_arrays(rewards)
    if arrays is not None:  # one compiled pass (pgkit.ops.kernels)
        from pgkit.ops.kernels import clip_flat

        x = arrays[0]
        flat = np.ascontiguousarray(x).reshape(-1)
        out = np.empty_like(flat)
        clip_flat(flat, min_val, max_val, out)
        return back(out.reshape(x.shape), is_torch(rewards))
    return give_back(as_tensor(rewards).clamp(min_val, max_val), is_torch(rewards))


clip_rewards_py = clip_rewards
"""The name stateset-rl-core's Python module actually exports."""


def compute_reward_statistics(rewards: Any) -> dict[str, Any]:
    """``mean``, ``std`` (population), ``min``, ``max``, ``median`` and ``count`` of a batch of rewards.

    numpy arrays and sequences of any dtype are computed in float64 (as stateset-rl-core) and the values are floats;
    tensors are computed in their own dtype (integers in float64), on their device, and the values are 0-d tensors.
    The median of an even count is the mean of the middle two. Infinite rewards follow IEEE arithmetic, in any order
    (the mean of ``[inf, 1]`` and of ``[1, inf]`` is ``inf``, the std of anything infinite NaN), as stateset-rl-core.
    Unlike stateset-rl-core, an empty batch also reports ``count`` (0), NaN input gives NaN statistics instead of a
    panic, and the mean, std and median do not overflow to ``inf`` on finite rewards near the float64 limit.
    """
    torch_out = is_torch(rewards)
    r = (as_tensor(rewards) if torch_out else as_tensor(np.asarray(rewards, dtype=np.float64))).reshape(-1)
    if r.numel() == 0:
        zero = r.new_zeros(())
        return {k: scalar_back(zero, torch_out) for k in ("mean", "std", "min", "max", "median", "count")}
    mean, var, scale = _moments(r)
    lower, upper = r.median(), -(-r).median()  # the lower and the upper middle value: no full sort
    pair = lower + upper
    median = torch.where(pair.isfinite(), pair / 2, lower / 2 + upper / 2)  # halves first only if the sum overflows
    stats = {"mean": mean, "std": var.sqrt() * scale, "min": r.min(), "max": r.max(), "median": median}
    stats["count"] = r.new_tensor(float(r.numel()))
    return {k: scalar_back(v, torch_out) for k, v in stats.items()}

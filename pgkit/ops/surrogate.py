"""Importance ratios and the clipped surrogate objective shared by PPO, GRPO and GSPO."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from pgkit.ops._arrays import as_tensor, back, cpu_arrays, give_back, is_torch


def clipped_surrogate(ratio: Tensor, advantage: Tensor, clip_low: float, clip_high: float) -> Tensor:
    """``min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)``, elementwise: the objective to maximise."""
    return torch.minimum(ratio * advantage, ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantage)


def sequence_ratio(log_prob_new: Tensor, log_prob_old: Tensor, length: Tensor) -> Tensor:
    """GSPO's length-normalised ratio ``exp((log pi_new - log pi_old) / |y|)`` of summed log-probs; 1 for length 0."""
    length = length.to(log_prob_new.dtype)
    mean_log_ratio = (log_prob_new - log_prob_old) / length.clamp_min(1.0)
    return torch.where(length > 0, mean_log_ratio.exp(), torch.ones_like(mean_log_ratio))


def kl_k3(log_ratio: Tensor) -> Tensor:
    """Schulman's k3 estimator of ``KL(p || q)`` from samples of ``p``: ``exp(d) - d - 1`` with ``d = log q - log p``.

    Unbiased and never negative. GRPO's KL to the reference policy (``d = log pi_ref - log pi``) and PPO's
    ``approx_kl`` (``d = log pi_new - log pi_old``, sampled from the old policy) are both this.
    """
    return torch.expm1(log_ratio) - log_ratio


def _check(ratio_shape: tuple, advantage_shape: tuple, low: float, high: float, name: str) -> None:
    if ratio_shape != advantage_shape:
        raise ValueError(f"{name}: ratios and advantages must have one shape, got {ratio_shape} and {advantage_shape}")
    if not low <= high:  # also catches NaN
        raise ValueError(f"{name}: the clip range [{low}, {high}] is empty")


def _flat(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``x`` as one contiguous row of ``dtype`` (a view when it already is one)."""
    return np.ascontiguousarray(x, dtype=dtype).reshape(-1)


def _stateset_surrogate(ratios: Any, advantages: Any, clip_low: float, clip_high: float, name: str) -> Any:
    """``A * min(r, 1 + clip_high)`` where ``A >= 0``, else ``A * max(r, 1 - clip_low)``: :func:`clipped_surrogate`
    written so that an advantage of 0 gives 0 even for an infinite ratio. NaN propagates."""
    low, high = 1.0 - clip_low, 1.0 + clip_high
    arrays = cpu_arrays(ratios, advantages)
    if arrays is not None:  # one compiled pass (pgkit.ops.kernels)
        r, a = arrays
        _check(r.shape, a.shape, low, high, name)
        from pgkit.ops.kernels import surrogate_flat

        dtype = np.promote_types(r.dtype, a.dtype)
        out = np.empty(r.size, dtype)
        surrogate_flat(_flat(r, dtype), _flat(a, dtype), low, high, out)
        return back(out.reshape(r.shape), is_torch(ratios, advantages))
    r, a = as_tensor(ratios), as_tensor(advantages)
    _check(tuple(r.shape), tuple(a.shape), low, high, name)
    out = torch.where(a >= 0, a * r.clamp(max=high), a * r.clamp(min=low))
    return give_back(out, is_torch(ratios, advantages))


def compute_ppo_surrogate(ratios: Any, advantages: Any, clip_epsilon: float = 0.2) -> Any:
    """PPO's clipped surrogate ``min(r * A, clip(r, 1 - eps, 1 + eps) * A)`` per sample (stateset-rl-core's).

    ``ratios`` and ``advantages`` must have one shape (stateset-rl-core truncates to the shorter), and a negative or
    NaN ``clip_epsilon`` is a ``ValueError`` (stateset-rl-core panics). A NaN ratio or advantage gives NaN, and so does
    ``0 * inf`` (a ratio of 0 with an infinite advantage; stateset-rl-core's ``min`` skips the NaN product).
    """
    return _stateset_surrogate(ratios, advantages, clip_epsilon, clip_epsilon, "compute_ppo_surrogate")


def apply_gspo_clipping(ratios: Any, advantages: Any, clip_left: float = 3e-4, clip_right: float = 4e-4) -> Any:
    """The surrogate with asymmetric clipping to ``[1 - clip_left, 1 + clip_right]`` (stateset-rl-core's).

    ``ratios`` and ``advantages`` must have one shape, and an empty or NaN clip range is a ``ValueError``
    (stateset-rl-core truncates, and uses whichever bound the advantage's sign picks). A NaN ratio gives NaN where
    stateset-rl-core returns the bound times the advantage.
    """
    return _stateset_surrogate(ratios, advantages, clip_left, clip_right, "apply_gspo_clipping")


def compute_gspo_importance_ratios(log_probs_new: Any, log_probs_old: Any, sequence_lengths: Any) -> Any:
    """GSPO sequence ratios ``(pi_new(y|x) / pi_old(y|x)) ** (1 / |y|)`` from per-sequence summed log-probs.

    A sequence of length 0 gets ratio 1, as in stateset-rl-core. Inputs of different lengths are an error
    (stateset-rl-core truncates to the shortest).
    """
    torch_out = is_torch(log_probs_new, log_probs_old, sequence_lengths)
    integer_lengths = type(sequence_lengths) is np.ndarray and sequence_lengths.dtype.kind in "iu"
    arrays = cpu_arrays(log_probs_new, log_probs_old, 0.0 if integer_lengths else sequence_lengths)
    if arrays is not None:  # one compiled pass (pgkit.ops.kernels)
        new, old, length = arrays
        length = sequence_lengths if integer_lengths else length
        if not new.shape == old.shape == length.shape:
            raise ValueError(f"log_probs_new, log_probs_old and sequence_lengths must have one shape, got "
                             f"{new.shape}, {old.shape} and {length.shape}")
        from pgkit.ops.kernels import sequence_ratio_flat

        dtype = np.promote_types(new.dtype, old.dtype)
        out = np.empty(new.size, dtype)
        if not (integer_lengths and new.dtype == np.float64):  # float64 holds every length the loop reads exactly
            length = _flat(length.astype(new.dtype, copy=False), dtype)  # as the tensor path: in new's dtype
        sequence_ratio_flat(_flat(new, dtype), _flat(old, dtype), np.ascontiguousarray(length).reshape(-1), out)
        return back(out.reshape(new.shape), torch_out)
    new, old, length = as_tensor(log_probs_new), as_tensor(log_probs_old), as_tensor(sequence_lengths)
    if not new.shape == old.shape == length.shape:
        raise ValueError(
            f"log_probs_new, log_probs_old and sequence_lengths must have one shape, got "
            f"{tuple(new.shape)}, {tuple(old.shape)} and {tuple(length.shape)}"
        )
    return give_back(sequence_ratio(new, old, length), torch_out)

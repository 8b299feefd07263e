"""Importance ratios and the clipped surrogate objective shared by PPO, GRPO and GSPO."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pgkit.ops._arrays import as_tensor, give_back, is_torch


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


def compute_ppo_surrogate(ratios: Any, advantages: Any, clip_epsilon: float = 0.2) -> Any:
    """PPO's clipped surrogate per sample (stateset-rl-core's ``compute_ppo_surrogate``).

    Shapes broadcast as in numpy (stateset-rl-core instead truncates to the shorter input).
    """
    out = clipped_surrogate(as_tensor(ratios), as_tensor(advantages), clip_epsilon, clip_epsilon)
    return give_back(out, is_torch(ratios, advantages))


def apply_gspo_clipping(ratios: Any, advantages: Any, clip_left: float = 3e-4, clip_right: float = 4e-4) -> Any:
    """The surrogate with asymmetric clipping to ``[1 - clip_left, 1 + clip_right]`` (stateset-rl-core's)."""
    out = clipped_surrogate(as_tensor(ratios), as_tensor(advantages), clip_left, clip_right)
    return give_back(out, is_torch(ratios, advantages))


def compute_gspo_importance_ratios(log_probs_new: Any, log_probs_old: Any, sequence_lengths: Any) -> Any:
    """GSPO sequence ratios ``(pi_new(y|x) / pi_old(y|x)) ** (1 / |y|)`` from per-sequence summed log-probs.

    A sequence of length 0 gets ratio 1, as in stateset-rl-core. Inputs of different lengths are an error
    (stateset-rl-core truncates to the shortest).
    """
    new, old, length = as_tensor(log_probs_new), as_tensor(log_probs_old), as_tensor(sequence_lengths)
    if not new.shape == old.shape == length.shape:
        raise ValueError(
            f"log_probs_new, log_probs_old and sequence_lengths must have one shape, got "
            f"{tuple(new.shape)}, {tuple(old.shape)} and {tuple(length.shape)}"
        )
    return give_back(sequence_ratio(new, old, length), is_torch(log_probs_new, log_probs_old, sequence_lengths))

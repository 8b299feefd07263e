"""Generalised advantage estimation with separate termination and truncation, via TorchRL."""

from __future__ import annotations

import torch
from torch import Tensor
from torchrl.objectives.value.functional import vec_generalized_advantage_estimate


def gae(
    reward: Tensor,
    value: Tensor,
    next_value: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Advantages and value targets for time-major rollouts of shape ``[T, N]``.

    ``next_value[t]`` is the value of the observation that followed step ``t``: for a truncated step it must be the
    value of the real final observation, which is bootstrapped; for a terminated step it is ignored. Either end cuts
    the trace, so no advantage leaks from one episode into the next.
    """

    # TorchRL wants [*batch, time, 1]: put envs first.
    def to_torchrl(x: Tensor) -> Tensor:
        return x.transpose(0, 1).unsqueeze(-1)

    done = terminated | truncated
    advantage, target = vec_generalized_advantage_estimate(
        gamma,
        gae_lambda,
        to_torchrl(value),
        to_torchrl(next_value),
        to_torchrl(reward),
        to_torchrl(done),
        to_torchrl(terminated),
    )
    return advantage.squeeze(-1).transpose(0, 1), target.squeeze(-1).transpose(0, 1)


def explained_variance(prediction: Tensor, target: Tensor) -> Tensor:
    """``1 - Var[target - prediction] / Var[target]``; NaN when the target is constant or has under 2 elements."""
    if target.numel() < 2:
        return torch.tensor(torch.nan, device=target.device)
    var_target = target.var()
    return torch.where(var_target > 0, 1.0 - (target - prediction).var() / var_target, torch.nan)


def normalize(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Zero mean, unit (unbiased) std, as CleanRL and SB3 normalise advantages."""
    return (x - x.mean()) / (x.std() + eps)

"""V-trace off-policy value targets and advantages (Espeholt et al. 2018, IMPALA).

With ``rho_t = pi(a_t|x_t) / mu(a_t|x_t)`` (current policy over behaviour policy), ``rho'_t = min(rho_bar, rho_t)``
and ``c_t = lambda * min(c_bar, rho_t)``:

- ``delta_t = rho'_t (r_t + gamma V(x_{t+1}) (1 - terminated_t) - V(x_t))``
- ``v_t - V(x_t) = delta_t + gamma c_t (1 - done_t) (v_{t+1} - V(x_{t+1}))``, a reverse discounted scan with a
  per-step discount, solved like GAE (one compiled pass on CPU, the blocked scan on CUDA);
- the policy-gradient advantage ``rho'_t (r_t + gamma v_{t+1} (1 - terminated_t) - V(x_t))``, where ``v_{t+1}`` is
  the bootstrap value itself at an episode end or after the last step.

A truncated step bootstraps from the value of its real final observation (``next_value``) and cuts the trace, as in
pgkit's GAE. ``lambda = 1`` is IMPALA's V-trace exactly (and TorchRL's ``vtrace_advantage_estimate``); on-policy
(``rho = 1``) with ``c_bar >= 1`` the targets are the lambda-returns, so the n-step returns for ``lambda = 1``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pgkit.ops.scan import reverse_scan


def vtrace(
    log_rho: Tensor,
    reward: Tensor,
    value: Tensor,
    next_value: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    rho_clip: float = 1.0,
    c_clip: float = 1.0,
    lam: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """``(advantage, value_target)`` for time-major rollouts ``[T, N]``.

    ``log_rho`` is ``log pi - log mu`` per step; ``next_value[t]`` is the value of the observation after step ``t``
    (the real final observation's at a truncation; ignored at a termination).
    """
    rho = log_rho.exp()
    clipped_rho = rho.clamp(max=rho_clip)
    not_terminated = (~terminated).to(value.dtype)
    delta = clipped_rho * (reward + gamma * not_terminated * next_value - value)
    trace = (~(terminated | truncated)).to(value.dtype) * (gamma * lam) * rho.clamp(max=c_clip)
    correction = reverse_scan(delta.T, trace.T).T  # v_t - V(x_t)
    target = value + correction
    next_target = torch.cat([target[1:], next_value[-1:]])
    next_target = torch.where(terminated | truncated, next_value, next_target)
    advantage = clipped_rho * (reward + gamma * not_terminated * next_target - value)
    return advantage, target


__all__ = ["vtrace"]

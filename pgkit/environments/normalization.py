"""Observation normalisation and reward scaling as ``nn.Module``s.

Their statistics are registered buffers, so they are saved in every checkpoint, restored on resume, moved by
``.to(device)`` and frozen simply by not calling ``update``. This is the fix for the classic failure of wrapper-based
normalisation (SB3 #468, CleanRL #532): statistics living in an env wrapper that the checkpoint never sees.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pgkit.ops.welford import merge_moments

_EPS = 1e-8


class RunningMeanStd(nn.Module):
    """Running mean and population variance of a stream of batches, kept in float64 buffers."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        # Starts at a tiny count like SB3/gymnasium, so the first batch dominates without dividing by zero.
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, batch: Tensor) -> None:
        """Fold ``batch`` (leading dim = samples) into the statistics."""
        x = batch.to(torch.float64)
        n = x.shape[0]
        batch_var = x.var(dim=0, unbiased=False) if n > 1 else torch.zeros_like(self.var)
        mean, var, count = merge_moments(self.mean, self.var, self.count, x.mean(dim=0), batch_var, float(n))
        self.mean.copy_(mean)
        self.var.copy_(var)
        self.count.copy_(count)


class ObservationNormalizer(nn.Module):
    """``clip((obs - mean) / sqrt(var + eps), -clip, clip)`` with running statistics."""

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled
        self.clip = clip
        self.rms = RunningMeanStd(shape)

    def update(self, obs: Tensor) -> None:
        """Add a batch of raw observations to the statistics (no-op when disabled)."""
        if self.enabled:
            self.rms.update(obs)

    def forward(self, obs: Tensor) -> Tensor:
        """Normalise raw observations; never changes the statistics."""
        obs = obs.float()
        if not self.enabled:
            return obs
        mean = self.rms.mean.to(obs.dtype)
        std = (self.rms.var + _EPS).sqrt().to(obs.dtype)
        return ((obs - mean) / std).clamp(-self.clip, self.clip)


class RewardScaler(nn.Module):
    """Divide rewards by the running std of the discounted return, then clip (CleanRL/SB3 ``norm_reward``).

    The per-env discounted return restarts at every episode end (terminated or truncated), as in SB3's
    ``VecNormalize``: a new episode's return owes nothing to the previous one.
    """

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled
        self.gamma = gamma
        self.clip = clip
        self.return_rms = RunningMeanStd(())
        self.register_buffer("returns", torch.zeros(num_envs, dtype=torch.float64))

    @torch.no_grad()
    def update(self, reward: Tensor, done: Tensor) -> None:
        """Advance the discounted returns with this step's rewards, update the statistics, then reset ended ones."""
        if not self.enabled:
            return
        self.returns.mul_(self.gamma).add_(reward.to(torch.float64))
        self.return_rms.update(self.returns)
        self.returns.masked_fill_(done, 0.0)

    def forward(self, reward: Tensor) -> Tensor:
        """Scale rewards by the current statistics; never changes them."""
        if not self.enabled:
            return reward.float()
        std = (self.return_rms.var + _EPS).sqrt()
        return (reward.to(torch.float64) / std).clamp(-self.clip, self.clip).float()

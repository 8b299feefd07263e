"""Diagonal Gaussian over a Box action space."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pgkit.distributions.base import ActionDistribution, check_same_family

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class Normal(ActionDistribution):
    """Independent Gaussian per action dimension.

    The raw sample is the unbounded Gaussian draw; the rollout clips or rescales it for the environment but
    stores this raw value, so the log-probability used in the update is that of the action actually sampled.
    """

    def __init__(self, mean: Tensor, log_std: Tensor) -> None:
        self.mean = mean
        self.log_std = log_std.expand_as(mean)
        self.std = self.log_std.exp()

    def sample(self) -> Tensor:
        with torch.no_grad():
            return self.mean + self.std * torch.randn_like(self.mean)

    def rsample(self) -> Tensor:
        """Reparameterised sample (differentiable in mean and log-std)."""
        return self.mean + self.std * torch.randn_like(self.mean)

    def sample_with_log_prob(self) -> tuple[Tensor, Tensor]:
        """``raw = mean + std * z`` and its log-density ``sum(-z^2 / 2 - log_std - log sqrt(2 pi))`` from ``z``."""
        with torch.no_grad():
            z = torch.randn_like(self.mean)
            log_prob = z.square().mul_(-0.5).sub_(self.log_std).sum(dim=-1).sub_(_LOG_SQRT_2PI * z.shape[-1])
            return torch.addcmul(self.mean, self.std, z), log_prob

    def log_prob(self, raw: Tensor) -> Tensor:
        z = (raw - self.mean) / self.std
        return (-0.5 * z.pow(2) - self.log_std - _LOG_SQRT_2PI).sum(dim=-1)

    def entropy(self) -> Tensor:
        return (0.5 + _LOG_SQRT_2PI + self.log_std).sum(dim=-1)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self, other: ActionDistribution) -> Tensor:
        check_same_family(self, other)
        assert isinstance(other, Normal)
        return gaussian_kl(self.mean, self.log_std, other.mean, other.log_std)


def gaussian_kl(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """``KL(N(mean_p, std_p) || N(mean_q, std_q))`` for diagonal Gaussians, summed over the last dim."""
    var_ratio = (2.0 * (log_std_p - log_std_q)).exp()
    mean_term = ((mean_p - mean_q) / log_std_q.exp()).pow(2)
    return 0.5 * (var_ratio + mean_term - 1.0 - 2.0 * (log_std_p - log_std_q)).sum(dim=-1)

"""Gaussian squashed by tanh and rescaled to the bounds of a Box action space."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pgkit.distributions.base import ActionDistribution, check_same_family
from pgkit.distributions.normal import Normal, gaussian_kl

_LOG_2 = math.log(2.0)


def tanh_log_det(pre_tanh: Tensor) -> Tensor:
    """``log(1 - tanh(x)^2)`` computed stably as ``2 (log 2 - x - softplus(-2x))``.

    The naive form underflows to ``log(0)`` for ``|x|`` above about 9 in float32.
    """
    return 2.0 * (_LOG_2 - pre_tanh - F.softplus(-2.0 * pre_tanh))


class TanhNormal(ActionDistribution):
    """``a = loc + scale * tanh(u)``, ``u ~ N(mean, std)``, with ``loc``/``scale`` mapping (-1, 1) to the bounds.

    The raw sample is ``u`` (pre-tanh). ``log_prob(u)`` is exact:
    ``log N(u) - sum log(1 - tanh(u)^2) - sum log(scale)``. The entropy has no closed form, so ``entropy()`` is a
    single-sample estimate ``-log_prob(u)`` with ``u`` reparameterised. The KL between two tanh-normals with the
    same bounds equals the KL of their Gaussians, because the same invertible map is applied to both.
    """

    analytic_entropy = False

    def __init__(self, mean: Tensor, log_std: Tensor, low: Tensor, high: Tensor) -> None:
        self.base = Normal(mean, log_std)
        self.loc = (high + low) / 2.0
        self.scale = (high - low) / 2.0

    def sample(self) -> Tensor:
        return self.base.sample()

    def log_prob(self, raw: Tensor) -> Tensor:
        log_det = (tanh_log_det(raw) + self.scale.log()).sum(dim=-1)
        return self.base.log_prob(raw) - log_det

    def entropy(self) -> Tensor:
        return -self.log_prob(self.base.rsample())

    def mode(self) -> Tensor:
        return self.base.mean

    def to_env(self, raw: Tensor) -> Tensor:
        return self.loc + self.scale * torch.tanh(raw)

    def kl(self, other: ActionDistribution) -> Tensor:
        check_same_family(self, other)
        assert isinstance(other, TanhNormal)
        return gaussian_kl(self.base.mean, self.base.log_std, other.base.mean, other.base.log_std)

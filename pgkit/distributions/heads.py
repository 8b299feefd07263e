"""Policy heads: ``nn.Module``s that map latent features to an action distribution."""

from __future__ import annotations

from typing import Literal

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from pgkit.distributions.base import ActionDistribution
from pgkit.distributions.categorical import Categorical, MultiCategorical
from pgkit.distributions.normal import Normal
from pgkit.distributions.tanh_normal import TanhNormal

DistributionName = Literal["normal", "tanh_normal", "categorical", "multi_categorical"]
LogStdMode = Literal["state_independent", "state_dependent"]

# Bounds for a state-dependent log-std, as in SAC implementations: keeps exp() finite early in training.
_LOG_STD_MIN, _LOG_STD_MAX = -20.0, 2.0

#: Which distributions each action-space type admits; the first is the default.
ALLOWED: dict[type, tuple[DistributionName, ...]] = {
    gym.spaces.Box: ("normal", "tanh_normal"),
    gym.spaces.Discrete: ("categorical",),
    gym.spaces.MultiDiscrete: ("multi_categorical",),
}


def allowed_distributions(action_space: gym.Space) -> tuple[DistributionName, ...]:
    """The distributions that can act in ``action_space`` (default first)."""
    for space_type, names in ALLOWED.items():
        if isinstance(action_space, space_type):
            return names
    raise ValueError(f"unsupported action space {action_space}")


def _linear(in_dim: int, out_dim: int, gain: float | None) -> nn.Linear:
    """A linear layer, orthogonal with ``gain`` and a zero bias, or PyTorch's default init when ``gain`` is None."""
    layer = nn.Linear(in_dim, out_dim)
    if gain is not None:
        nn.init.orthogonal_(layer.weight, gain)
        nn.init.zeros_(layer.bias)
    return layer


class GaussianHead(nn.Module):
    """Mean from a linear layer; log-std either a free parameter or a second linear output."""

    def __init__(
        self,
        latent_dim: int,
        action_space: gym.spaces.Box,
        squash: bool,
        log_std_mode: LogStdMode,
        log_std_init: float,
        gain: float | None,
    ) -> None:
        super().__init__()
        act_dim = int(np.prod(action_space.shape))
        self.squash = squash
        self.state_dependent = log_std_mode == "state_dependent"
        self.mean = _linear(latent_dim, act_dim, gain)
        if self.state_dependent:
            self.log_std = _linear(latent_dim, act_dim, gain)
            nn.init.constant_(self.log_std.bias, log_std_init)
        else:
            self.log_std_param = nn.Parameter(torch.full((act_dim,), float(log_std_init)))
        self.register_buffer("low", torch.as_tensor(action_space.low, dtype=torch.float32).flatten())
        self.register_buffer("high", torch.as_tensor(action_space.high, dtype=torch.float32).flatten())

    def linears(self) -> list[nn.Linear]:
        """The linear layers applied to the latent, in the order :meth:`from_outputs` takes their outputs."""
        return [self.mean, self.log_std] if self.state_dependent else [self.mean]

    def forward(self, latent: Tensor) -> ActionDistribution:
        return self.from_outputs([layer(latent) for layer in self.linears()])

    def from_outputs(self, outputs: list[Tensor]) -> ActionDistribution:
        """The distribution from the outputs of :meth:`linears` (also fed by the fused rollout forward)."""
        mean = outputs[0]
        if self.state_dependent:
            log_std = outputs[1].clamp(_LOG_STD_MIN, _LOG_STD_MAX)
        else:
            log_std = self.log_std_param.expand_as(mean)
        if self.squash:
            return TanhNormal(mean, log_std, self.low, self.high)
        return Normal(mean, log_std)


class CategoricalHead(nn.Module):
    """Logits from a linear layer, split per dimension for MultiDiscrete spaces."""

    def __init__(self, latent_dim: int, nvec: list[int], gain: float | None) -> None:
        super().__init__()
        self.nvec = nvec
        self.logits = _linear(latent_dim, sum(nvec), gain)

    def linears(self) -> list[nn.Linear]:
        """The linear layers applied to the latent, in the order :meth:`from_outputs` takes their outputs."""
        return [self.logits]

    def forward(self, latent: Tensor) -> ActionDistribution:
        return self.from_outputs([self.logits(latent)])

    def from_outputs(self, outputs: list[Tensor]) -> ActionDistribution:
        """The distribution from the outputs of :meth:`linears` (also fed by the fused rollout forward)."""
        logits = outputs[0]
        if len(self.nvec) == 1:
            return Categorical(logits)
        return MultiCategorical(logits, self.nvec)


def make_head(
    name: DistributionName,
    action_space: gym.Space,
    latent_dim: int,
    log_std_mode: LogStdMode = "state_independent",
    log_std_init: float = 0.0,
    gain: float | None = 0.01,
) -> nn.Module:
    """Build the head for distribution ``name`` on ``action_space`` (which must admit it): orthogonal with ``gain``,
    or PyTorch's default init when ``gain`` is None."""
    if name not in allowed_distributions(action_space):
        raise ValueError(f"distribution {name!r} cannot act in {action_space}")
    if name in ("normal", "tanh_normal"):
        assert isinstance(action_space, gym.spaces.Box)
        return GaussianHead(latent_dim, action_space, name == "tanh_normal", log_std_mode, log_std_init, gain)
    if isinstance(action_space, gym.spaces.Discrete):
        return CategoricalHead(latent_dim, [int(action_space.n)], gain)
    assert isinstance(action_space, gym.spaces.MultiDiscrete)
    return CategoricalHead(latent_dim, [int(n) for n in action_space.nvec.flatten()], gain)

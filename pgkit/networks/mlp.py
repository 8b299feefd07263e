"""Multi-layer perceptrons with orthogonal initialisation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from torch import nn

Activation = Literal["tanh", "relu", "swish", "elu"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "swish": nn.SiLU, "elu": nn.ELU}

#: The gain for hidden layers used by CleanRL, SB3 and the PPO implementation-details study, for every activation.
HIDDEN_GAIN = math.sqrt(2.0)


def mlp(in_dim: int, hidden: Sequence[int], activation: Activation, ortho_init: bool = True) -> nn.Sequential:
    """``Linear -> activation`` for each hidden size; the output width is ``hidden[-1]`` (or ``in_dim`` if empty)."""
    layers: list[nn.Module] = []
    width = in_dim
    for size in hidden:
        linear = nn.Linear(width, size)
        if ortho_init:
            nn.init.orthogonal_(linear.weight, HIDDEN_GAIN)
            nn.init.zeros_(linear.bias)
        layers += [linear, _ACTIVATIONS[activation]()]
        width = size
    return nn.Sequential(*layers)


def output_width(in_dim: int, hidden: Sequence[int]) -> int:
    """Width of the features an :func:`mlp` produces."""
    return hidden[-1] if hidden else in_dim

"""From a policy's raw sample to the action an environment accepts."""

from __future__ import annotations

from typing import Literal

import gymnasium as gym
import torch
from torch import Tensor, nn

from pgkit.distributions import ActionDistribution, TanhNormal

ActionBounds = Literal["clip", "rescale", "none"]


class ActionAdapter(nn.Module):
    """Keeps Box actions inside their bounds; the raw (unclipped) sample stays in the buffer for the log-prob.

    - ``clip``: clamp to ``[low, high]`` (CleanRL, SB3).
    - ``rescale``: clamp to ``[-1, 1]`` and map affinely onto ``[low, high]``, for policies that act in a unit box.
    - ``none``: pass through.

    Tanh-normal samples are already mapped onto the bounds by the distribution, so they pass through unchanged.
    """

    def __init__(self, action_space: gym.Space, mode: ActionBounds) -> None:
        super().__init__()
        self.is_box = isinstance(action_space, gym.spaces.Box)
        self.mode = mode if self.is_box else "none"
        low = torch.as_tensor(action_space.low if self.is_box else 0.0, dtype=torch.float32).flatten()
        high = torch.as_tensor(action_space.high if self.is_box else 0.0, dtype=torch.float32).flatten()
        self.register_buffer("low", low, persistent=False)
        self.register_buffer("high", high, persistent=False)

    def forward(self, dist: ActionDistribution, raw: Tensor) -> Tensor:
        """The environment action for raw sample ``raw`` of ``dist``."""
        action = dist.to_env(raw)
        if isinstance(dist, TanhNormal) or self.mode == "none":
            return action
        if self.mode == "clip":
            return torch.clamp(action, self.low, self.high)
        return self.low + (action.clamp(-1.0, 1.0) + 1.0) * 0.5 * (self.high - self.low)

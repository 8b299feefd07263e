"""From a policy's raw sample to the action an environment accepts."""

from __future__ import annotations

from typing import Literal

import gymnasium as gym
import numpy as np
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

    Discrete and MultiDiscrete samples are category indices from 0; the space's ``start`` is added (so
    ``Discrete(3, start=-1)`` receives -1, 0 or 1) and MultiDiscrete actions take the space's shape.
    """

    def __init__(self, action_space: gym.Space, mode: ActionBounds) -> None:
        super().__init__()
        self.is_box = isinstance(action_space, gym.spaces.Box)
        self.mode = mode if self.is_box else "none"
        low = torch.as_tensor(action_space.low if self.is_box else 0.0, dtype=torch.float32).flatten()
        high = torch.as_tensor(action_space.high if self.is_box else 0.0, dtype=torch.float32).flatten()
        self.register_buffer("low", low, persistent=False)
        self.register_buffer("high", high, persistent=False)
        start = getattr(action_space, "start", None) if not self.is_box else None
        self.discrete_shape: tuple[int, ...] | None = None
        self.shifted = start is not None and bool(np.any(start != 0))
        if start is not None:
            self.discrete_shape = tuple(np.shape(start))
            self.register_buffer("start", torch.as_tensor(np.asarray(start, dtype=np.int64)).flatten(),
                                 persistent=False)

    def forward(self, dist: ActionDistribution, raw: Tensor) -> Tensor:
        """The environment action for raw sample ``raw`` of ``dist``."""
        action = dist.to_env(raw)
        if self.discrete_shape is not None:
            if self.shifted:
                action = action + (self.start if self.discrete_shape else self.start[0])
            return action.reshape(action.shape[0], *self.discrete_shape) if self.discrete_shape else action
        if isinstance(dist, TanhNormal) or self.mode == "none":
            return action
        if self.mode == "clip":
            return torch.clamp(action, self.low, self.high)
        return self.low + (action.clamp(-1.0, 1.0) + 1.0) * 0.5 * (self.high - self.low)


def check_action_space(action_space: gym.Space) -> None:
    """Raise ``ValueError`` for a Discrete or MultiDiscrete space whose actions pgkit cannot produce: every action is
    a category index from 0 plus the space's ``start``, computed in int64 and handed over in the space's dtype."""
    start = getattr(action_space, "start", None)
    if start is None or isinstance(action_space, gym.spaces.Box):
        return
    n = action_space.n if isinstance(action_space, gym.spaces.Discrete) else action_space.nvec
    start, n = np.asarray(start, dtype=object), np.asarray(n, dtype=object)
    info = np.iinfo(action_space.dtype) if np.issubdtype(action_space.dtype, np.integer) else None
    int64 = np.iinfo(np.int64)
    low, high = min(start.flat), max((start + n - 1).flat)
    limit_low, limit_high = (max(info.min, int64.min), min(info.max, int64.max)) if info else (int64.min, int64.max)
    if low < limit_low or high > limit_high:
        raise ValueError(
            f"{action_space} has actions from {low} to {high}, outside what pgkit can hand to it "
            f"({np.dtype(action_space.dtype).name if info else 'int64'}: {limit_low} to {limit_high})"
        )

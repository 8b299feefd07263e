"""``pgkit/Memory-v0``: observe a sequence of symbols, then reproduce it. It needs memory.

An episode has ``2 * length`` steps. During the first ``length`` steps (the *show* phase) the observation is the
one-hot code of one symbol of a random sequence (drawn from ``num_symbols``); actions do nothing. During the next
``length`` steps (the *recall* phase) the observation carries no symbol, only a flag that says recall, and the
action at recall step ``j`` pays 1 if it is symbol ``j`` of the sequence. A policy without memory sees the same
observation at every recall step, so it can do no better than chance.

Observation: ``float32 [num_symbols + 1]``: the symbol's one-hot code (zeros during recall), then the recall flag.
Action: ``Discrete(num_symbols)``.

Optimal return: ``length`` (every symbol reproduced). A memoryless policy expects ``length / num_symbols`` (2 with
the defaults, ``length`` 4 and 2 symbols).
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np


class MemoryEnv(gym.Env[np.ndarray, np.int64]):
    """Show ``length`` symbols, then reward each correctly recalled one (see the module docstring)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, length: int = 4, num_symbols: int = 2) -> None:
        if length < 1:
            raise ValueError(f"length must be at least 1 (got {length})")
        if num_symbols < 2:
            raise ValueError(f"num_symbols must be at least 2 (got {num_symbols})")
        self.length, self.num_symbols = length, num_symbols
        self.observation_space = gym.spaces.Box(0.0, 1.0, (num_symbols + 1,), np.float32)
        self.action_space = gym.spaces.Discrete(num_symbols)
        self.sequence = np.zeros(length, np.int64)
        self.t = 0

    @property
    def optimal_return(self) -> float:
        """Return of a perfect recall."""
        return float(self.length)

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.num_symbols + 1, np.float32)
        if self.t < self.length:
            obs[self.sequence[self.t]] = 1.0
        else:
            obs[-1] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.sequence = self.np_random.integers(self.num_symbols, size=self.length)
        self.t = 0
        return self._obs(), {}

    def step(self, action: np.int64):
        recall = self.t - self.length
        reward = float(recall >= 0 and int(action) == self.sequence[recall])
        self.t += 1
        terminated = self.t >= 2 * self.length
        obs = np.zeros(self.num_symbols + 1, np.float32) if terminated else self._obs()
        if terminated:
            obs[-1] = 1.0
        return obs, reward, terminated, False, {}

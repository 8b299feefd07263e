"""``pgkit/Bandit-v0``: a multi-armed Bernoulli bandit, one pull per episode.

The arms' success probabilities are fixed by ``layout_seed`` (the same bandit whatever the reset seed): the best arm
pays 1 with probability ``best_probability`` (0.9), every other arm with a probability drawn uniformly from
``[0.1, 0.6]``. The observation is a constant, so the policy must simply find the best arm.

Optimal return: ``best_probability`` (0.9) per episode. A uniformly random policy gets the mean of the
probabilities, about 0.4 with the defaults.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np


class BanditEnv(gym.Env[np.ndarray, np.int64]):
    """Pull one of ``num_arms`` arms; reward 1 with the arm's probability, else 0; the episode ends."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, num_arms: int = 10, best_probability: float = 0.9, layout_seed: int = 0) -> None:
        if num_arms < 2:
            raise ValueError(f"num_arms must be at least 2 (got {num_arms})")
        if not 0.6 < best_probability <= 1.0:
            raise ValueError(f"best_probability must be in (0.6, 1] (got {best_probability})")
        layout = np.random.default_rng(layout_seed)
        self.probabilities = layout.uniform(0.1, 0.6, size=num_arms)
        self.best_arm = int(layout.integers(num_arms))
        self.probabilities[self.best_arm] = best_probability
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(num_arms)

    @property
    def optimal_return(self) -> float:
        """Expected return of always pulling the best arm."""
        return float(self.probabilities[self.best_arm])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action: np.int64):
        arm = int(action)
        reward = float(self.np_random.random() < self.probabilities[arm])
        return np.zeros(1, np.float32), reward, True, False, {"best_arm": arm == self.best_arm}

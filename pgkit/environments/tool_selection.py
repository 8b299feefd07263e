"""``pgkit/ToolSelection-v0``: a contextual bandit where an agent picks the right tool for a task.

Each episode is one decision. The observation is a task: a one-hot task type plus distractor features drawn from
N(0, 1). The agent picks one of ``num_tools`` tools. Each task type has one best tool (reward 1), one acceptable
fallback (reward 0.3) and the rest wrong (reward 0); every call also costs its tool's price, so the reward is
``quality - cost``. ``info`` reports ``quality``, ``speed`` (``-cost``) and ``optimal`` (whether the best tool was
chosen), so the env also serves multi-objective (Pareto) scoring.

Optimal return: ``1 - cost`` of each task's best tool, 0.934 on average with the default layout; a uniformly random
choice gets 0.156.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np


class ToolSelectionEnv(gym.Env[np.ndarray, np.int64]):
    """Pick the tool that suits the task. Optimal choices return ``1 - cost``; a random policy gets about 0.2."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, num_tasks: int = 6, num_tools: int = 6, num_distractors: int = 4, layout_seed: int = 0) -> None:
        if num_tools < 3:
            raise ValueError(f"num_tools must be at least 3 (got {num_tools})")
        layout = np.random.default_rng(layout_seed)
        self.num_tasks, self.num_tools, self.num_distractors = num_tasks, num_tools, num_distractors
        self.best_tool = layout.integers(num_tools, size=num_tasks)
        offsets = layout.integers(1, num_tools, size=num_tasks)
        self.fallback_tool = (self.best_tool + offsets) % num_tools  # never the best one
        self.cost = layout.uniform(0.0, 0.1, size=num_tools)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (num_tasks + num_distractors,), np.float32)
        self.action_space = gym.spaces.Discrete(num_tools)
        self._task = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._task = int(self.np_random.integers(self.num_tasks))
        obs = np.zeros(self.observation_space.shape, dtype=np.float32)
        obs[self._task] = 1.0
        obs[self.num_tasks :] = self.np_random.standard_normal(self.num_distractors)
        return obs, {}

    def step(self, action: np.int64):
        tool = int(action)
        quality = 1.0 if tool == self.best_tool[self._task] else 0.3 if tool == self.fallback_tool[self._task] else 0.0
        cost = float(self.cost[tool])
        info = {"quality": quality, "speed": -cost, "optimal": tool == self.best_tool[self._task]}
        obs = np.zeros(self.observation_space.shape, dtype=np.float32)
        return obs, quality - cost, True, False, info

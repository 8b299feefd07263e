"""``pgkit/Squared-v0``: walk from the centre of a square grid to a target on its border.

The grid is ``size x size`` (odd). Each episode the agent starts in the centre cell and a target appears on a
random border cell. Actions: 0 stay, 1 up, 2 down, 3 left, 4 right (moves into a wall stay put). Reaching the
target pays 1 and ends the episode; after ``max_steps`` (default ``2 * size``) steps it is truncated.

Optimal return: 1 every episode, reached in the Manhattan distance from the centre to the target (``(size - 1) / 2``
to ``size - 1`` steps); a uniformly random policy reaches the target in about 7% of the episodes on the default
7 x 7 grid.

``observation`` chooses what the agent sees, so the same task checks every encoder:

- ``grid`` (default): the grid flattened, ``float32 [size * size]``: 1 at the agent, -1 at the target, 0 elsewhere;
- ``image``: ``uint8 [size, size, 3]``, the agent in the red channel and the target in the green one (255);
- ``dict``: ``{"target": uint8 [size, size, 1] image of the target, "position": float32 [2] agent position in
  [-1, 1]}``: neither key alone tells where to go;
- ``discrete``: ``MultiDiscrete([size] * 4)``, the agent's and the target's row and column.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import gymnasium as gym
import numpy as np

_MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]])


class SquaredEnv(gym.Env):
    """Grid navigation to a target on the border of a square (see the module docstring)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(
        self,
        size: int = 7,
        max_steps: int | None = None,
        observation: Literal["grid", "image", "dict", "discrete"] = "grid",
        render_mode: str | None = None,
    ) -> None:
        if size < 3 or size % 2 == 0:
            raise ValueError(f"size must be odd and at least 3 (got {size})")
        self.size, self.max_steps = size, max_steps or 2 * size
        self.observation, self.render_mode = observation, render_mode
        border = [(r, c) for r in range(size) for c in range(size) if r in (0, size - 1) or c in (0, size - 1)]
        self.border = np.array(border)
        self.action_space = gym.spaces.Discrete(5)
        if observation == "grid":
            self.observation_space = gym.spaces.Box(-1.0, 1.0, (size * size,), np.float32)
        elif observation == "image":
            self.observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        elif observation == "dict":
            self.observation_space = gym.spaces.Dict({
                "position": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
                "target": gym.spaces.Box(0, 255, (size, size, 1), np.uint8),
            })
        elif observation == "discrete":
            self.observation_space = gym.spaces.MultiDiscrete([size] * 4)
        else:
            raise ValueError(f"observation must be grid, image, dict or discrete (got {observation!r})")
        self.agent = np.zeros(2, np.int64)
        self.target = np.zeros(2, np.int64)
        self.t = 0

    def _obs(self):
        size, (ar, ac), (tr, tc) = self.size, self.agent, self.target
        if self.observation == "grid":
            grid = np.zeros((size, size), np.float32)
            grid[tr, tc], grid[ar, ac] = -1.0, 1.0
            return grid.flatten()
        if self.observation == "discrete":
            return np.array([ar, ac, tr, tc], np.int64)
        image = np.zeros((size, size, 3), np.uint8)
        image[ar, ac, 0], image[tr, tc, 1] = 255, 255
        if self.observation == "image":
            return image
        position = (self.agent / (size - 1) * 2 - 1).astype(np.float32)
        return {"position": position, "target": image[:, :, 1:2].copy()}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.agent = np.array([self.size // 2, self.size // 2])
        self.target = self.border[self.np_random.integers(len(self.border))].copy()
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.agent = np.clip(self.agent + _MOVES[int(action)], 0, self.size - 1)
        self.t += 1
        reached = bool((self.agent == self.target).all())
        truncated = not reached and self.t >= self.max_steps
        return self._obs(), float(reached), reached, truncated, {}

    def render(self) -> np.ndarray:
        """The grid as an RGB image, 16 pixels a cell."""
        image = np.full((self.size, self.size, 3), 40, np.uint8)
        image[tuple(self.target)] = (60, 200, 60)
        image[tuple(self.agent)] = (220, 60, 60)
        return image.repeat(16, axis=0).repeat(16, axis=1)

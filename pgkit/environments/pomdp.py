"""Partially observable versions of classic-control tasks: the velocities are removed from the observation.

``pgkit/CartPoleNoVel-v1`` observes only the cart position and the pole angle of ``CartPole-v1``;
``pgkit/PendulumNoVel-v1`` only ``cos`` and ``sin`` of the angle of ``Pendulum-v1``. A feedforward policy cannot tell
which way things are moving, so these need memory (the standard recurrent-RL benchmarks of RL Zoo's
``CartPoleNoVel`` and ``PendulumNoVel``, which zero the velocities where these drop them). Optimal returns are the
underlying tasks': 500 for CartPole, about -150 for Pendulum.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np


class KeepObservation(gym.ObservationWrapper):
    """Keep only the observation entries at ``indices`` of a flat Box observation."""

    def __init__(self, env: gym.Env, indices: Sequence[int]) -> None:
        super().__init__(env)
        self.indices = np.asarray(indices)
        space = env.observation_space
        self.observation_space = gym.spaces.Box(space.low[self.indices], space.high[self.indices],
                                                dtype=space.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation[self.indices]


def cartpole_no_velocity(**kwargs) -> gym.Env:
    """``CartPole-v1`` observing ``[x, theta]``."""
    return KeepObservation(gym.make("CartPole-v1", **kwargs), [0, 2])


def pendulum_no_velocity(**kwargs) -> gym.Env:
    """``Pendulum-v1`` observing ``[cos theta, sin theta]``."""
    return KeepObservation(gym.make("Pendulum-v1", **kwargs), [0, 1])

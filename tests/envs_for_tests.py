"""Tiny deterministic environments for exact tests of the rollout."""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np


class CounterEnv(gym.Env):
    """Observation is the step index within the episode; reward 1 per step; the action is ignored.

    With ``terminate_at`` the episode terminates at that step; otherwise a TimeLimit truncates it. The final
    observation (the step index at the end) differs from every reset observation (0), so a test can tell whether
    a bootstrap used the real final observation.
    """

    def __init__(self, terminate_at: int | None = None) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.terminate_at = terminate_at
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        terminated = self.terminate_at is not None and self.t >= self.terminate_at
        return np.array([float(self.t)], np.float32), 1.0, terminated, False, {}


class TerminatingCounterEnv(CounterEnv):
    """:class:`CounterEnv` that terminates at step 3."""

    def __init__(self) -> None:
        super().__init__(terminate_at=3)


class CrashingEnv(CounterEnv):
    """Raises from ``step`` once any instance in the process has taken 40 steps: a run that fails mid-way."""

    steps_taken = 0

    def step(self, action):
        CrashingEnv.steps_taken += 1
        if CrashingEnv.steps_taken > 40:
            raise RuntimeError("simulated simulator crash")
        return super().step(action)


class MultiDiscreteEnv(gym.Env):
    """MultiDiscrete([3, 2]) actions; reward 1 for each component matching the observation's hint; 20-step episodes."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(0.0, 2.0, (2,), np.float32)
        self.action_space = gym.spaces.MultiDiscrete([3, 2])
        self.t = 0
        self.hint = np.zeros(2, np.int64)

    def _obs(self):
        return self.hint.astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        self.hint = np.array([self.np_random.integers(3), self.np_random.integers(2)])
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        reward = float(np.sum(np.asarray(action) == self.hint))
        self.hint = np.array([self.np_random.integers(3), self.np_random.integers(2)])
        return self._obs(), reward, False, self.t >= 20, {}


class FaultyEnv(gym.Env):
    """Continuous toy env that misbehaves at global step ``at`` of the sub-env with reset seed index ``which``:
    ``fault`` is ``nan_obs``, ``inf_reward``, ``huge_reward`` (finite, but overflows float32 returns), ``overflow``
    (1e300 from then on: the reward normaliser's variance overflows) or ``raise``.

    Sub-envs are told apart by their reset seed (pgkit seeds sub-env i with ``seed + i``), so ``which=1`` targets the
    second sub-env of a run seeded 1 (seed 2).
    """

    def __init__(self, fault: str = "nan_obs", at: int = 50, which: int = 1, seed_base: int = 1) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.fault, self.at, self.target_seed = fault, at, seed_base + which
        self.is_target = False
        self.t = self.steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.is_target = seed == self.target_seed
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        self.steps += 1
        obs = np.array([self.t / 10, float(action[0]), 1.0], np.float32)
        reward = -float(action[0]) ** 2
        if self.is_target and self.steps >= self.at:
            if self.fault == "nan_obs":
                obs[1] = np.nan
            elif self.fault == "inf_reward":
                reward = float("inf")
            elif self.fault == "huge_reward" and self.steps == self.at:
                reward = 3e38
            elif self.fault == "overflow":
                reward = 1e300  # finite, but its square (the running variance) is not
            elif self.fault == "raise":
                raise RuntimeError("simulated physics blow-up")
        return obs, reward, False, self.t >= 20, {}


class ShiftedActionsEnv(gym.Env):
    """Actions in ``Discrete(3, start=-1)`` (``kind="discrete"``) or ``MultiDiscrete([3, 2], start=[-1, 5])``
    (``kind="multi"``). ``step`` raises on any action outside the space, so a run that hands unshifted actions
    fails. Reward 1 per component equal to the observation's one-hot target; 10-step episodes; renders a frame."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}  # noqa: RUF012 (gymnasium's convention)

    def __init__(self, kind: str = "discrete", render_mode: str | None = None) -> None:
        if kind == "discrete":
            self.action_space = gym.spaces.Discrete(3, start=-1)
        elif kind == "overflow":  # actions 125 to 129 do not fit int8
            self.action_space = gym.spaces.MultiDiscrete([5], dtype=np.int8, start=[125])
        else:
            self.action_space = gym.spaces.MultiDiscrete([3, 2], start=[-1, 5])
        self.observation_space = gym.spaces.Box(0.0, 1.0, (5,), np.float32)
        self.render_mode = render_mode
        self.seen: set = set()
        self.t = 0

    def _new_target(self):
        space = self.action_space
        self.target = space.sample()
        obs = np.zeros(5, np.float32)
        for i, value in enumerate(np.atleast_1d(self.target - space.start)):
            obs[int(value) + 3 * i] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.action_space.seed(int(self.np_random.integers(2**31)))
        self.t = 0
        return self._new_target(), {}

    def step(self, action):
        if not self.action_space.contains(np.asarray(action, dtype=self.action_space.dtype)):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        self.seen.add(tuple(np.atleast_1d(action).tolist()))
        self.t += 1
        reward = float(np.sum(np.atleast_1d(action) == np.atleast_1d(self.target)))
        return self._new_target(), reward, False, self.t >= 10, {}

    def render(self):
        return np.full((64, 64, 3), 20 * self.t, np.uint8)


class UnpicklableEnv(CounterEnv):
    """:class:`CounterEnv` holding a lambda and an open file handle, as user envs do: it cannot be pickled."""

    def __init__(self) -> None:
        super().__init__(terminate_at=7)
        self.transform = lambda x: x
        self.log = open(__file__)  # noqa: SIM115 (a handle the env keeps)


class MarkerEnv(CounterEnv):
    """:class:`CounterEnv` (episodes of 5 steps) that creates the file ``marker`` at its first step, so a test knows
    when stepping has begun."""

    def __init__(self, marker: str = "") -> None:
        super().__init__(terminate_at=5)
        self.marker = marker

    def step(self, action):
        if self.marker:
            open(self.marker, "a").close()
        return super().step(action)


class RankCrashEnv(CounterEnv):
    """:class:`CounterEnv` whose step raises after 20 steps in the process of global rank 1 (torchrun's ``RANK``):
    one rank of a distributed run fails, the others must not hang."""

    def __init__(self) -> None:
        super().__init__(terminate_at=10)
        self.crash = os.environ.get("RANK") == "1"
        self.steps = 0

    def step(self, action):
        self.steps += 1
        if self.crash and self.steps > 20:
            raise RuntimeError("simulated crash on rank 1")
        return super().step(action)


class RankMissingEnv(CounterEnv):
    """:class:`CounterEnv` that cannot be made in the process of global rank 1 (as on a node lacking a library):
    that rank fails its checks before the process group forms, and the others must not wait for it."""

    def __init__(self) -> None:
        if os.environ.get("RANK") == "1":
            raise ImportError("simulated missing library on rank 1")
        super().__init__(terminate_at=10)


class AsymmetricBoxEnv(gym.Env):
    """Random 4-dim observations and a 3-dim Box action space with different, asymmetric bounds per dimension;
    episodes of 10 steps. For checks of per-dimension action handling."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
        low, high = np.array([-1.0, -2.0, 0.0], np.float32), np.array([2.0, 1.0, 0.5], np.float32)
        self.action_space = gym.spaces.Box(low, high)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.normal(size=4).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        reward = -float(np.square(np.asarray(action) - 0.3).sum())
        return self.np_random.normal(size=4).astype(np.float32), reward, False, self.t >= 10, {}


class SlowEnv(CounterEnv):
    """:class:`CounterEnv` (episodes of 20 steps) that sleeps ``delay`` seconds a step, so an iteration lasts long
    enough for a test to act in the middle of it."""

    def __init__(self, delay: float = 0.01) -> None:
        super().__init__(terminate_at=20)
        self.delay = delay

    def step(self, action):
        import time

        time.sleep(self.delay)
        return super().step(action)

"""envpool's C++ thread pool (``pip install envpool``) as a vector env that behaves like pgkit's: what
``benchmarks/env_backends.py`` and ``benchmarks/env_overlap.py`` measure it with. It is not an ``env.backend``: it
measured no faster than ``split`` in training here (docs/benchmarks.md, "Both cores").

envpool resets an ended episode on the step after it (gymnasium's ``NEXT_STEP`` autoreset: that step ignores its
action and returns the reset observation with reward 0), and pgkit's rollout wants ``SAME_STEP`` (the reset
observation at once, the real final one in ``info["final_obs"]``). So a step that ends episodes steps those sub-envs
once more, alone, and returns their reset observations. Sub-env ``i`` is seeded ``seed + i``, as pgkit seeds a
``SyncVectorEnv``, but envpool draws its reset noise from its own generator, so the episodes are not gymnasium's.
Rewards come as float64 (envpool's are float32); only ``final_obs`` / ``_final_obs`` are kept from the info.

:meth:`EnvpoolVectorEnv.step_async` and :meth:`~EnvpoolVectorEnv.step_wait` split a step, so the caller can work
while envpool's threads step. ``benchmarks/envpool_check.py`` compares envpool's MuJoCo tasks with gymnasium's v5
ones step for step.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_space


def available() -> bool:
    """Whether envpool can be imported."""
    try:
        import envpool  # noqa: F401
    except ImportError:
        return False
    return True


def default_threads(num_envs: int) -> int:
    """One thread per core this process may use, at most one per sub-env."""
    from pgkit.environments.split import usable_cores

    return max(1, min(num_envs, usable_cores()))


class EnvpoolVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` copies of envpool task ``env_id`` as a same-step-autoreset vector env (see the module docstring).

    ``kwargs`` go to ``envpool.make_gymnasium`` (its MuJoCo tasks take gymnasium's v5 keyword names);
    ``max_episode_steps`` overrides the task's time limit.
    """

    def __init__(self, env_id: str, num_envs: int, kwargs: dict[str, Any] | None = None,
                 max_episode_steps: int | None = None, num_threads: int | None = None) -> None:
        self.env_id, self.num_envs = env_id, num_envs
        self._options = dict(kwargs or {})
        if max_episode_steps is not None:
            self._options["max_episode_steps"] = max_episode_steps
        self._threads = num_threads or default_threads(num_envs)
        self._pool: Any = None
        self._open(seed=0)
        probe = self._pool
        self.single_observation_space = probe.observation_space
        space = probe.action_space
        if isinstance(space, gym.spaces.Box) and space.dtype != np.float32:
            # envpool declares float64 actions; pgkit's policies act in float32, as gymnasium's MuJoCo spaces
            space = gym.spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32)
        self.single_action_space = space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}
        self.render_mode = None
        self.spec = None
        self._idle_actions = np.zeros((num_envs, *space.shape), dtype=space.dtype)
        self._order = np.arange(num_envs)

    def _open(self, seed: int) -> None:
        import envpool

        if self._pool is not None:
            self._pool.close()
        self._pool = envpool.make_gymnasium(self.env_id, num_envs=self.num_envs, batch_size=self.num_envs,
                                            num_threads=self._threads, seed=seed, **self._options)

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        if options:
            raise ValueError("the envpool backend takes no reset options; use env.backend: sync")
        if seed is not None:
            seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else list(seed)
            if len(seeds) != self.num_envs or any(s != seeds[0] + i for i, s in enumerate(seeds)):
                raise ValueError(f"envpool seeds sub-env i with seed + i; got the seeds {seeds}")
            self._open(seed=int(seeds[0]))  # envpool takes its seed when made
        obs, info = self._pool.reset()
        return obs[np.argsort(info["env_id"])], {}

    def step(self, actions: Any):
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: Any) -> None:
        """Start a step: envpool's threads step the sub-envs while the caller goes on (:meth:`step_wait` ends it)."""
        self._pool.send(np.asarray(actions))

    def step_wait(self):
        """The results of the step :meth:`step_async` started, as :meth:`step` returns them."""
        obs, reward, terminated, truncated, info = self._pool.recv()
        order = info["env_id"]
        if (order != self._order).any():  # in case: envpool's sync mode returns them in the order sent
            rank = np.argsort(order)
            obs, reward, terminated, truncated = obs[rank], reward[rank], terminated[rank], truncated[rank]
        reward = reward.astype(np.float64)
        done = terminated | truncated
        if not done.any():
            return obs, reward, terminated, truncated, {}
        ended = np.flatnonzero(done)
        final_obs = np.full(self.num_envs, None, dtype=object)
        for i in ended:
            final_obs[i] = obs[i].copy()
        # the step envpool resets them in: it ignores the actions and returns reward 0, both flags False
        reset_obs, *_, reset_info = self._pool.step(self._idle_actions[: len(ended)], ended.astype(np.int32))
        obs = obs.copy()
        obs[reset_info["env_id"]] = reset_obs
        return obs, reward, terminated, truncated, {"final_obs": final_obs, "_final_obs": done.copy()}

    def close_extras(self, **kwargs: Any) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("envpool's vector env cannot be pickled (its sub-envs live in C++)")


def make(env_id: str, num_envs: int, num_threads: int | None = None) -> gym.vector.VectorEnv:
    """What ``pgkit.environments.make_vec_env`` would give for this backend: with episode statistics."""
    return gym.wrappers.vector.RecordEpisodeStatistics(EnvpoolVectorEnv(env_id, num_envs, num_threads=num_threads))


def install() -> None:
    """Make pgkit's rollouts step envpool instead of ``env.backend: sync`` in this process (the benchmarks run
    ``pgkit fit`` with it so; the config still says ``sync``)."""
    import pgkit.rollout

    def make_vec_env(env_id: str, num_envs: int, vectorization: str = "sync", kwargs: dict[str, Any] | None = None,
                     max_episode_steps: int | None = None) -> gym.vector.VectorEnv:
        if vectorization != "sync":
            raise ValueError("install() replaces the sync backend only")
        envs = EnvpoolVectorEnv(env_id, num_envs, kwargs, max_episode_steps)
        return gym.wrappers.vector.RecordEpisodeStatistics(envs)

    pgkit.rollout.make_vec_env = make_vec_env

"""Environment creation: registered ids or ``module:Class`` entry points, flat observations, vector envs."""

from __future__ import annotations

import difflib
import functools
import importlib
import logging
from collections.abc import Callable
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector import AutoresetMode

Vectorization = Literal["sync", "async", "split"]
"""How sub-envs step: ``sync`` (this process), ``async`` (a process each), ``split`` (two halves at once, one in a
worker process; :mod:`pgkit.environments.split`)."""

_log = logging.getLogger("pgkit.mujoco")


@functools.cache
def route_mujoco_warnings() -> None:
    """Send MuJoCo's warnings to Python logging instead of stderr and a MUJOCO_LOG.TXT in the working directory.

    MuJoCo >= 3.17 warns on every model load that gymnasium's MuJoCo XMLs use the deprecated ``settotalmass``;
    that one is logged at DEBUG, anything else at WARNING.
    """
    try:
        import mujoco
    except ImportError:
        return

    def handler(message: str) -> None:
        level = logging.DEBUG if "settotalmass" in message else logging.WARNING
        _log.log(level, "MuJoCo: %s", message.strip())

    mujoco.set_mju_user_warning(handler)


def is_entry_point(env_id: str) -> bool:
    """``module:Class`` (or ``module:function``) rather than a registered id."""
    return ":" in env_id and env_id not in gym.registry


def check_env_id(env_id: str) -> None:
    """Raise ``ValueError`` with the closest registered ids when ``env_id`` names no environment."""
    if is_entry_point(env_id):
        module_name, _, attr = env_id.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"cannot import module {module_name!r} of entry point: {exc}") from None
        if not hasattr(module, attr):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
        return
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `pgkit list` shows the registered ids"
    raise ValueError(f"unknown environment{hint}")


def _spec(env_id: str, max_episode_steps: int | None) -> str | EnvSpec:
    if is_entry_point(env_id):
        return EnvSpec(id=env_id, entry_point=env_id, max_episode_steps=max_episode_steps)
    return env_id


def make_env(
    env_id: str,
    kwargs: dict[str, Any] | None = None,
    max_episode_steps: int | None = None,
    render_mode: str | None = None,
) -> gym.Env:
    """One environment, its observations as the env gives them (:mod:`pgkit.environments.observations` handles
    Dict, Tuple, image and discrete observations)."""
    route_mujoco_warnings()
    extra: dict[str, Any] = dict(kwargs or {})
    if render_mode is not None:
        extra["render_mode"] = render_mode
    spec = _spec(env_id, max_episode_steps)
    if isinstance(spec, str) and max_episode_steps is not None:
        extra["max_episode_steps"] = max_episode_steps
    return gym.make(spec, **extra)


class SubEnvError(RuntimeError):
    """An exception raised inside one sub-environment, with its index in the message (a plain message, so
    ``AsyncVectorEnv`` can rebuild it in the parent process)."""


class IndexedEnv(gym.Wrapper):
    """Re-raises a sub-env's exceptions from ``step``/``reset`` as :class:`SubEnvError` naming its index."""

    def __init__(self, env: gym.Env, index: int) -> None:
        super().__init__(env)
        self.index = index

    def step(self, action):
        try:
            return self.env.step(action)
        except Exception as exc:
            raise SubEnvError(f"sub-env {self.index} step: {exc.__class__.__name__}: {exc}") from exc

    def reset(self, **kwargs):
        try:
            return self.env.reset(**kwargs)
        except Exception as exc:
            raise SubEnvError(f"sub-env {self.index} reset: {exc.__class__.__name__}: {exc}") from exc

    # Pickling (the env state saved for exact resume). gymnasium's MuJoCo envs pickle through EzPickle, which
    # rebuilds them from their constructor arguments: fresh physics, fresh generator. Carry both across.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        base = self.env.unwrapped
        state["_np_random"] = base._np_random
        if _is_mujoco(base):
            import mujoco

            spec = mujoco.mjtState.mjSTATE_INTEGRATION
            physics = np.empty(mujoco.mj_stateSize(base.model, spec))
            mujoco.mj_getState(base.model, base.data, physics, spec)
            state["_mujoco_physics"] = physics
        return state

    def __setstate__(self, state: dict) -> None:
        np_random = state.pop("_np_random", None)
        physics = state.pop("_mujoco_physics", None)
        self.__dict__.update(state)
        base = self.env.unwrapped
        base._np_random = np_random
        if physics is not None:
            import mujoco

            mujoco.mj_setState(base.model, base.data, physics, mujoco.mjtState.mjSTATE_INTEGRATION)
            mujoco.mj_forward(base.model, base.data)


def _is_mujoco(env: gym.Env) -> bool:
    return hasattr(env, "model") and hasattr(env, "data") and type(env.data).__module__.startswith("mujoco")


def _make_indexed(env_id: str, kwargs: dict[str, Any] | None, max_episode_steps: int | None, index: int) -> gym.Env:
    return IndexedEnv(make_env(env_id, kwargs, max_episode_steps), index)


def make_vec_env(
    env_id: str,
    num_envs: int,
    vectorization: Vectorization = "sync",
    kwargs: dict[str, Any] | None = None,
    max_episode_steps: int | None = None,
) -> gym.vector.VectorEnv:
    """A vector env that autoresets in the same step (the real final observation is in ``info["final_obs"]``)
    and records episode returns and lengths of the raw rewards."""
    # partials of a module-level function, not lambdas: a SyncVectorEnv must pickle (checkpointed env state)
    fns: list[Callable[[], gym.Env]] = [
        functools.partial(_make_indexed, env_id, kwargs, max_episode_steps, i) for i in range(num_envs)
    ]
    if vectorization == "split":
        from pgkit.environments.split import SplitVectorEnv

        envs: gym.vector.VectorEnv = SplitVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    else:
        cls = gym.vector.SyncVectorEnv if vectorization == "sync" else gym.vector.AsyncVectorEnv
        envs = cls(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


def seed_list(seed: int, num_envs: int, offset: int = 0) -> list[int]:
    """Distinct reset seeds for each sub-env (``offset`` separates ranks or evaluation envs)."""
    return [int(seed) + offset + i for i in range(num_envs)]


def flat_dim(space: gym.Space) -> int:
    """Number of scalars in a flat observation."""
    return int(np.prod(space.shape))

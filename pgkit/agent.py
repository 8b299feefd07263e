"""A trained policy loaded from a checkpoint: :class:`Agent` and :func:`load` (re-exported by :mod:`pgkit.api` and
``pgkit.load``). Its own module so that what serves a policy (the MLflow model) needs none of the training side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np


def _is_single(space: gym.Space, obs: Any) -> bool:
    """Whether ``obs`` is one observation of ``space`` rather than a batch (SB3's rule: compare shapes)."""
    while isinstance(space, gym.spaces.Dict | gym.spaces.Tuple):
        key = next(iter(space.spaces)) if isinstance(space, gym.spaces.Dict) else 0
        space, obs = space[key], obs[key]
    if isinstance(space, gym.spaces.Discrete):
        return np.ndim(obs) == 0
    return np.shape(obs) == tuple(space.shape)


class Agent:
    """A trained policy loaded from a checkpoint: ``predict`` maps raw observations to environment actions, with
    the run's observation normalisation and action bounds inside (SB3's ``model.predict`` contract)."""

    def __init__(self, module: Any, config: Any) -> None:
        self.module = module
        """The trained LightningModule, in eval mode."""
        self.config = config
        """The run's validated config."""

    @property
    def observation_space(self) -> gym.Space:
        """The environment's observation space."""
        return self.module.observation_space

    @property
    def action_space(self) -> gym.Space:
        """The environment's action space."""
        return self.module.action_space

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """``(action, next_state)`` for one raw observation (an action back) or a batch (a batch of actions back).

        ``state`` is the recurrent state returned by the previous call (None for a new episode, and always None
        for a feedforward policy); where ``episode_start`` is true the state is reset before acting. The mode of
        the action distribution is taken when ``deterministic`` (the default, as ``pgkit eval``)."""
        single = _is_single(self.observation_space, observation)
        batch = self.module.observation_layout.add_batch_dim(observation) if single else observation
        if single and episode_start is not None:
            episode_start = np.asarray([episode_start], dtype=bool)
        actions, next_state = self.module.act(batch, deterministic, state, episode_start)
        if not self.module.policy.recurrent:
            next_state = None
        return (actions[0] if single else actions), next_state


def load(checkpoint: str | Path) -> Agent:
    """The trained policy in ``checkpoint`` (any pgkit ``.ckpt``), ready to ``predict``.

    The policy is rebuilt from the checkpoint alone, spaces included: no env is made and nothing the checkpoint
    names is imported, so a checkpoint from anyone loads safely (:mod:`pgkit.trust`). A file that is not a pgkit
    checkpoint, or a language-model run, raises :class:`~pgkit.errors.UserError` with one line."""
    from pgkit.evaluation import restore_agent

    module, cfg, _ = restore_agent(checkpoint, needs_env=False, action="pgkit.load")
    return Agent(module, cfg)


__all__ = ["Agent", "load"]

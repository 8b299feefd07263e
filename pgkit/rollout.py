"""Rollout collection: step the vector env with the acting policy and write every transition into the buffer.

:class:`Collector` owns what lives between iterations: the vector env, the next observation, and for a recurrent
policy each env's state and whether its next step starts an episode. Each iteration it fills a preallocated
``TensorDict`` ``[num_steps, num_envs]``:

================  =====================================================================================
``obs``           processed observation (a tensor, or a TensorDict of leaves for Dict/Tuple spaces)
``action``        the raw sample (what ``log_prob`` scores; clipping happens on the way to the env)
``log_prob``      its log-probability under the acting (behaviour) policy
``reward``        the scaled reward
``terminated``    the episode ended in a terminal state (no bootstrap)
``truncated``     the episode was cut (bootstrap from ``final_value``, the real final observation's value)
``value``         the acting critic's value of ``obs``
``episode_start`` this step begins an episode (a recurrent state is reset before it)
================  =====================================================================================

and the algorithm then fills ``advantage``, ``return`` and ``mask``. A recurrent policy's state at the start of
each BPTT chunk (every ``bptt_horizon`` steps) is kept in :attr:`Collector.sequence_states` ``[chunks, N, S]``.

The seam is :meth:`~pgkit.algorithms.base.OnPolicyModule.policy_step`: ``(obs, state) -> (raw action, log-prob,
value, env action, next state)``. A feedforward policy's state is an empty ``[N, 0]`` tensor; a recurrent one
carries its core's state. Any other source of actions (a text generator) plugs in the same way and fills the same
layout.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from gymnasium.vector import SyncVectorEnv
from tensordict import TensorDict
from torch import Tensor

from pgkit.environments import make_vec_env, seed_list
from pgkit.environments.split import SplitVectorEnv
from pgkit.errors import TrainingError
from pgkit.networks.fused import fuse
from pgkit.resume_state import pack_env_state, unpack_env_state

if TYPE_CHECKING:
    from pgkit.algorithms.base import OnPolicyModule


class Collector:
    """The vector env of one process and the rollout loop over it (see the module docstring)."""

    def __init__(self, module: OnPolicyModule, horizon: int) -> None:
        self.module = module
        self.horizon = horizon
        """BPTT chunk length: a recurrent state is stored every ``horizon`` steps."""
        self.envs: Any = None
        self.next_obs: Any = None  # raw observation batch (numpy), as the env gave it
        self.state: Tensor | None = None  # [N, S] recurrent state before the reset of episode_start
        self.episode_start = np.ones(module.num_envs, dtype=bool)
        self.sequence_states: Tensor | None = None
        self.steps_taken = 0
        self.unsaveable = False
        """Whether the envs proved unpicklable, so checkpoints go without their env state."""

    # ------------------------------------------------------------------------------------------------ envs
    def open(self, rank: int) -> None:
        """Make this rank's vector env and reset it with the run's seeds (rank r's sub-env i: seed + r * N + i)."""
        m, env_cfg = self.module, self.module.cfg.env
        self.envs = make_vec_env(env_cfg.id, m.num_envs, env_cfg.backend, env_cfg.kwargs,
                                 env_cfg.max_episode_steps)
        seeds = seed_list(m.cfg.trainer.seed, m.num_envs, offset=rank * m.num_envs)
        self.reset(seeds)
        self.envs.action_space.seed(seeds[0])

    def reset(self, seeds: list[int] | None = None) -> None:
        """Reset every sub-env (with ``seeds``, or continuing their generators): all start new episodes."""
        obs, _ = self.envs.reset(seed=seeds)
        self.next_obs = self._own(obs)
        self.episode_start[:] = True
        self.state = self.module.policy.initial_state(self.module.num_envs, self.module.device)

    def close(self) -> None:
        if self.envs is not None:
            self.envs.close()
            self.envs = None

    def _own(self, obs: Any) -> Any:
        """A plain vector observation as float32 numpy (what the normaliser's fast path takes); others as given."""
        return np.asarray(obs, dtype=np.float32) if self.module.observation_layout.plain_vector else obs

    # --------------------------------------------------------------------------------------------- the buffer
    def allocate(self, num_steps: int) -> TensorDict:
        """Zeros for one rollout, on the module's device (allocated outside inference mode, so the update may use
        the buffer in autograd)."""
        m = self.module
        T, N, dev = num_steps, m.num_envs, m.device
        act_shape = m.action_space.shape or ()
        act_dtype = torch.float32 if act_shape and m.action_space.dtype.kind == "f" else torch.int64
        f32 = dict(dtype=torch.float32, device=dev)
        flag = dict(dtype=torch.bool, device=dev)
        if m.policy.recurrent:
            self.sequence_states = torch.zeros(T // self.horizon, N, m.policy.state_size, **f32)
        return TensorDict(
            {
                "obs": m.observation_layout.allocate((T, N), dev),
                "action": torch.zeros(T, N, *act_shape, dtype=act_dtype, device=dev),
                "log_prob": torch.zeros(T, N, **f32),
                "reward": torch.zeros(T, N, **f32),
                "terminated": torch.zeros(T, N, **flag),
                "truncated": torch.zeros(T, N, **flag),
                "episode_start": torch.zeros(T, N, **flag),
                "value": torch.zeros(T, N, **f32),
                "final_value": torch.zeros(T, N, **f32),
                "advantage": torch.zeros(T, N, **f32),
                "return": torch.zeros(T, N, **f32),
                "mask": torch.ones(T, N, **f32),  # 1 where a step counts in the loss
            },
            batch_size=[T, N],
            device=dev,
        )

    # -------------------------------------------------------------------------------------------- the loop
    def collect(self, b: TensorDict) -> list[tuple[float, int]]:
        """Fill ``b`` with one rollout (advantages are the module's business); return the ``(return, length)`` of
        each episode that ended during it. Runs under ``torch.inference_mode()``."""
        m = self.module
        obs_b, act_b, logp_b, val_b, final_b = (b[k] for k in ("obs", "action", "log_prob", "value", "final_value"))
        final_b.zero_()
        dev = m.device
        m.begin_rollout()
        # Rewards and flags stay numpy on the host; on CPU they are written through numpy views of the buffer (a
        # numpy store costs ~1 us, a torch one ~4).
        host = dev.type == "cpu"
        rew_s, term_s, trunc_s, start_s = (
            b[k].numpy() if host else b[k] for k in ("reward", "terminated", "truncated", "episode_start")
        )
        obs = self.next_obs
        actor = m.acting_policy
        recurrent = actor.recurrent
        m.rollout_kernel = None
        if m.use_acting_kernel:  # trainer.kernels: the compiled acting step (a Gaussian MLP policy on CPU)
            from pgkit.algorithms.kernel_update import ActingKernel

            m.rollout_kernel = ActingKernel(actor, m.action_adapter)
        m.rollout_forward = None if m._compiled or recurrent or m.use_acting_kernel else fuse(actor)
        state = self.state
        episodes: list[tuple[float, int]] = []
        any_end = np.zeros(m.num_envs, dtype=bool)
        self.steps_taken = T = b.batch_size[0]
        for t in range(T):
            m.obs_normalizer.update(obs)
            norm_obs = m.obs_normalizer(obs)
            if recurrent:
                if self.episode_start.any():
                    state = state * torch.as_tensor(~self.episode_start, device=dev).unsqueeze(-1)
                if t % self.horizon == 0:
                    self.sequence_states[t // self.horizon] = state
            start_s[t] = self.episode_start if host else torch.as_tensor(self.episode_start)
            m.mark_step()
            raw, log_prob, value, env_action, next_state = m.policy_step(norm_obs, state)
            obs_b[t], act_b[t], logp_b[t], val_b[t] = norm_obs, raw, log_prob, value
            try:
                next_obs, reward, terminated, truncated, info = self.envs.step(env_action.cpu().numpy())
            except Exception as exc:
                raise TrainingError(f"env {m.cfg.env.id} failed at iteration {m.current_epoch + 1}: {exc}") from exc
            next_obs = self._own(next_obs)
            self._check_finite(next_obs, reward)
            done = terminated | truncated
            m.reward_scaler.update(reward, done)
            rew_s[t] = m.reward_scaler.scale(reward)
            if host:
                term_s[t], trunc_s[t] = terminated, truncated
            else:
                term_s[t], trunc_s[t] = torch.as_tensor(terminated), torch.as_tensor(truncated)
            bootstrap = np.flatnonzero(truncated & ~terminated)
            if bootstrap.size:  # value of the real final observation, not of the auto-reset one
                final_b[t, torch.as_tensor(bootstrap, device=dev)] = self._final_value(
                    actor, info["final_obs"][bootstrap], next_state[torch.as_tensor(bootstrap, device=dev)]
                )
            if "episode" in info:
                finished = np.flatnonzero(info["_episode"])
                episodes += [(float(info["episode"]["r"][i]), int(info["episode"]["l"][i])) for i in finished]
            obs, state = next_obs, next_state
            self.episode_start = done
            m.observe_step(info, done)
            any_end |= done
            if t + 1 < T and m.rollout_finished(any_end):
                self.steps_taken = t + 1
                # Unused rows end every trace and carry nothing, so no stale data reaches the steps before them.
                for key, fill in (("reward", 0.0), ("value", 0.0), ("terminated", True), ("truncated", False),
                                  ("episode_start", True)):
                    b[key][t + 1 :] = fill
                if recurrent:  # unused chunks start from zero, not from a previous rollout's states
                    self.sequence_states[-(-(t + 1) // self.horizon) :] = 0.0
                break
        self.next_obs, self.state = obs, state
        return episodes

    def _final_value(self, actor, final_obs: np.ndarray, state: Tensor) -> Tensor:
        m = self.module
        processed = m.obs_normalizer(m.observation_layout.stack(list(final_obs)))
        if actor.recurrent:  # the state after the last step of the episode, before any reset
            return actor.step(processed, state)[1]
        return actor.value(processed)

    def last_value(self) -> Tensor:
        """The acting critic's value of the observation after the rollout (from each env's current state)."""
        actor = self.module.acting_policy
        obs = self.module.obs_normalizer(self.next_obs)
        if not actor.recurrent:
            return actor.value(obs)
        keep = torch.as_tensor(~self.episode_start, device=self.module.device).unsqueeze(-1)
        return actor.step(obs, self.state * keep)[1]

    def _check_finite(self, obs: Any, reward: np.ndarray) -> None:
        layout = self.module.observation_layout
        arrays = [obs] if layout.plain_vector else [
            np.asarray(a) for leaf, a in zip(layout.leaves, layout.raw_leaves(obs), strict=True)
            if leaf.kind == "vector"
        ]
        bad_reward = not np.isfinite(reward).all()
        bad_obs = [np.flatnonzero(~np.isfinite(a.reshape(len(reward), -1)).all(1)) for a in arrays
                   if not np.isfinite(a).all()]
        if not (bad_obs or bad_reward):
            return
        what, where = ("observation", bad_obs[0]) if bad_obs else ("reward", np.flatnonzero(~np.isfinite(reward)))
        m = self.module
        raise TrainingError(
            f"non-finite {what} from env {m.cfg.env.id} sub-env {int(where[0])} at iteration {m.current_epoch + 1}"
        )

    # ------------------------------------------------------------------------------------- exact resume state
    def pack_state(self) -> Tensor | None:
        """The vector env, the next observation and the recurrent state, pickled and signed for the checkpoint (see
        :mod:`pgkit.resume_state`), or None where they cannot be saved (async envs, envs that do not pickle)."""
        if self.unsaveable or not isinstance(self.envs.unwrapped if self.envs is not None else None,
                                             (SyncVectorEnv, SplitVectorEnv)):
            return None
        state = {"envs": self.envs, "next_obs": self.next_obs, "env_id": self.module.cfg.env.id,
                 "num_envs": self.module.num_envs, "episode_start": self.episode_start.copy(),
                 "recurrent_state": self.state.cpu()}
        try:
            return pack_env_state(state)
        except Exception as exc:  # PicklingError, AttributeError, TypeError, ctypes' ValueError, ...
            # The env state is an extra: an env holding a lambda, a handle or a wrapper's closure cannot be pickled.
            # Say so once and go on; checkpoints are complete without it, and a resume starts from fresh envs.
            self.unsaveable = True
            detail = " ".join(str(exc).split())[:160]
            print(f"pgkit: the state of env {self.module.cfg.env.id} cannot be saved ({exc.__class__.__name__}: "
                  f"{detail}); checkpoints are written without it, so a resumed run starts from freshly reset envs",
                  file=sys.stderr)
            return None

    def restore(self, packed: Tensor | None) -> None:
        """Replace the freshly reset envs by the ones saved in the checkpoint when their signed state verifies;
        otherwise keep the fresh envs (and zero recurrent states) and say why (the run resumes, not bit-exactly)."""
        if packed is None:
            print("pgkit: resuming with freshly reset envs: the checkpoint holds no env state for this rank (async "
                  "envs, envs that cannot be pickled, or a checkpoint of an older pgkit)", file=sys.stderr)
            return
        state, reason = unpack_env_state(packed)
        if state is not None and (state.get("env_id") != self.module.cfg.env.id
                                  or state.get("num_envs") != self.module.num_envs):
            state, reason = None, "it belongs to another env or number of sub-envs"
        if state is None:
            print(f"pgkit: resuming with freshly reset envs: {reason}", file=sys.stderr)
            return
        self.envs.close()
        self.envs, self.next_obs = state["envs"], state["next_obs"]
        self.episode_start = state["episode_start"]
        self.state = state["recurrent_state"].to(self.module.device)

"""Policy evaluation on fresh environments, shared by training-time evaluation and ``pgkit eval``."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pgkit.environments import make_env, make_vec_env, seed_list
from pgkit.environments.observations import ObservationLayout
from pgkit.errors import UserError

#: Offset between the reset seeds of training and evaluation envs, so evaluation never replays training starts.
EVAL_SEED_OFFSET = 1_000_000


class Actor(Protocol):
    """Anything that maps a batch of raw observations to environment actions, carrying a (recurrent) state.

    ``act(obs, deterministic, state, episode_start)`` returns ``(actions, next_state)``; ``state=None`` means new
    episodes, and the state of envs whose ``episode_start`` is true is reset before acting (SB3's ``predict``)."""

    def act(self, obs: Any, deterministic: bool, state: Any = None, episode_start: Any = None) -> tuple[Any, Any]: ...


@dataclass(frozen=True)
class EvalResult:
    """Undiscounted returns and lengths of complete evaluation episodes."""

    returns: list[float]
    lengths: list[int]

    @property
    def mean_return(self) -> float:
        """Mean episode return."""
        return float(np.mean(self.returns))

    @property
    def std_return(self) -> float:
        """Population standard deviation of the episode returns."""
        return float(np.std(self.returns))


class EvalInterrupted(Exception):
    """Ctrl-C during :func:`evaluate`; ``result`` holds the episodes that finished before it."""

    def __init__(self, result: EvalResult) -> None:
        super().__init__(f"interrupted after {len(result.returns)} episodes")
        self.result = result


def headless_gl() -> None:
    """On Linux without a display and with ``MUJOCO_GL`` unset, pick MuJoCo's EGL backend (GPU or Mesa), or OSMesa
    when only that library is installed, so ``--video`` renders on a headless machine. Must run before MuJoCo is
    imported."""
    if not sys.platform.startswith("linux"):  # macOS and Windows render without a display server
        return
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or "MUJOCO_GL" in os.environ:
        return
    import ctypes.util

    for backend, library in (("egl", "EGL"), ("osmesa", "OSMesa")):
        if ctypes.util.find_library(library):
            os.environ["MUJOCO_GL"] = backend
            os.environ.setdefault("PYOPENGL_PLATFORM", backend)
            return


def evaluate(
    actor: Actor,
    env_id: str,
    episodes: int,
    deterministic: bool,
    seed: int,
    env_kwargs: dict | None = None,
    max_episode_steps: int | None = None,
    max_parallel: int = 16,
    partial_on_interrupt: bool = False,
) -> EvalResult:
    """Run exactly ``episodes`` complete episodes.

    Each sub-env is given a fixed quota of episodes before stepping starts, so short episodes are not
    over-represented (stopping at the first ``episodes`` finishers would bias the mean towards them). With
    ``partial_on_interrupt`` (``pgkit eval``), Ctrl-C raises :class:`EvalInterrupted` with the episodes finished so
    far; otherwise (training's evaluations) the ``KeyboardInterrupt`` goes through unchanged.
    """
    num_envs = min(episodes, max_parallel)
    quota = np.array([episodes // num_envs + (i < episodes % num_envs) for i in range(num_envs)])
    envs = make_vec_env(env_id, num_envs, "sync", env_kwargs, max_episode_steps)
    returns: list[float] = []
    lengths: list[int] = []
    try:
        obs, _ = envs.reset(seed=seed_list(seed, num_envs))
        done_count = np.zeros(num_envs, dtype=int)
        state, episode_start = None, np.ones(num_envs, dtype=bool)
        while (done_count < quota).any():
            actions, state = actor.act(obs, deterministic, state, episode_start)
            obs, _, terminated, truncated, info = envs.step(actions)
            episode_start = terminated | truncated  # same-step autoreset: obs already starts the next episode
            if "episode" in info:
                for i in np.flatnonzero(info["_episode"]):
                    if done_count[i] < quota[i]:
                        returns.append(float(info["episode"]["r"][i]))
                        lengths.append(int(info["episode"]["l"][i]))
                        done_count[i] += 1
    except KeyboardInterrupt:
        if not partial_on_interrupt:
            raise
        raise EvalInterrupted(EvalResult(returns, lengths)) from None
    finally:
        envs.close()
    return EvalResult(returns, lengths)


def restore_agent(checkpoint: str | Path, seed: int | None = None, *, needs_env: bool = True,
                  trust_code: bool = False, action: str = "evaluate") -> tuple[Any, Any, int]:
    """Rebuild the trained module from a checkpoint alone: ``(module in eval mode, config, evaluation seed)``.

    With ``needs_env`` (``pgkit eval``) the config is checked as a new one, env included; a checkpoint that names
    code (an env entry point, reward functions, ...) must be this user's own or ``trust_code`` must be given
    (:mod:`pgkit.trust`), else :class:`UserError`. Without it (``predict``, ``export``, the MLflow model) the policy
    is built from the spaces the checkpoint carries: no env is made and nothing the checkpoint names is imported.
    The default seed is the one training-time evaluation used, so ``pgkit eval`` reproduces its returns.
    """
    from pgkit.checkpoints import load_checkpoint, load_weights
    from pgkit.config_loading import check_spaces, parse_config
    from pgkit.trust import check_code_allowed

    loaded = load_checkpoint(checkpoint)
    language = "model" in loaded.config
    if language and not needs_env:
        raise UserError(f"checkpoint error: {checkpoint}: is a language-model run, which {action} does not take; "
                        "evaluate it with pgkit eval, or load its model with transformers")
    if not needs_env and loaded.spaces is None:
        # Written before checkpoints carried their spaces: the env must be made to read them.
        needs_env, action = True, f"{action} (it predates checkpoints that carry their spaces)"
    if needs_env:
        check_code_allowed(checkpoint, loaded.config, loaded.own, trust_code, action)
    cfg = parse_config(loaded.config, import_code=needs_env)
    if language:
        module = cfg.init()
    else:
        if needs_env:  # the env's own spaces: the weights must fit the env that will be stepped
            probe = cfg.env.make_probe()
            spaces = probe.observation_space, probe.action_space
            probe.close()
        else:  # the checkpoint's, checked as an env's are
            spaces = loaded.spaces
            check_spaces(cfg, spaces)
        _check_sizes(cfg, loaded, spaces)  # before anything is allocated
        module = cfg.init(spaces)
    load_weights(module, loaded)
    module.eval()
    return module, cfg, cfg.trainer.seed + EVAL_SEED_OFFSET if seed is None else seed


def _check_sizes(cfg: Any, loaded: Any, spaces: tuple[Any, Any]) -> None:
    """Raise :class:`UserError` when the module ``cfg`` builds for ``spaces`` does not have exactly the checkpoint's
    tensors. Built on torch's ``meta`` device first (shapes, no memory), so a crafted config or space
    asking for a layer of a billion units is refused before it is allocated."""
    import importlib

    import torch

    from pgkit.config import ALGORITHMS

    importlib.import_module(ALGORITHMS[cfg.algorithm.name][1].split(":")[0])  # imports allocate outside meta
    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in cfg.init(spaces).state_dict().items()}
    except (ValueError, RuntimeError, TypeError) as exc:
        raise UserError(f"checkpoint error: {loaded.path}: its config builds no policy for its spaces: "
                        f"{' '.join(str(exc).split())[:200]}") from None
    saved = {k: tuple(v.shape) for k, v in loaded.state_dict.items()}
    if shapes != saved:
        wrong = sorted(k for k in shapes.keys() | saved.keys() if shapes.get(k) != saved.get(k))
        raise UserError(f"checkpoint error: {loaded.path}: does not fit this config and its spaces (did env.num_envs, "
                        f"the env or the policy change? the tensors {', '.join(wrong[:3])} differ)")


def record_video(actor: Actor, cfg: Any, folder: str | Path, episodes: int, deterministic: bool, seed: int) -> None:
    """Record ``episodes`` episodes, one video each, with gymnasium's ``RecordVideo`` (needs ``moviepy``)."""
    try:
        import moviepy  # noqa: F401
    except ImportError:
        # Not `pip install 'pgkit[video]'`: an unrelated `pgkit` exists on PyPI; install from the checkout.
        raise UserError("eval error: --video needs moviepy: in your pgkit checkout, run "
                        "pip install -e '.[video]' -c constraints.txt") from None
    import gymnasium as gym

    env = make_env(cfg.env.id, cfg.env.kwargs, cfg.env.max_episode_steps, render_mode="rgb_array")
    env = gym.wrappers.RecordVideo(env, str(folder), episode_trigger=lambda _: True, disable_logger=True)
    layout = ObservationLayout.from_space(env.observation_space)
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            done, state = False, None
            while not done:
                actions, state = actor.act(layout.add_batch_dim(obs), deterministic, state)
                obs, _, terminated, truncated, _ = env.step(actions[0])
                done = terminated or truncated
    finally:
        env.close()

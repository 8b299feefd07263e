"""Issue 15's third option for both cores, measured: env stepping overlapped with acting and the rollout's
bookkeeping, against the rollout loop as it is (``env.backend`` sync and split).

Run: ``python benchmarks/env_overlap.py`` (about 3 minutes on 2 cores; nothing else should run; the envpool rows
need ``pip install envpool``).

What is timed: the rollouts of ``configs/ppo-fast.yaml`` (HalfCheetah-v5, 8 sub-envs, 256 steps, the compiled acting
kernel), without updates, in fresh processes, alternating, ``--repeats`` times; each figure is the median rollout of
12 (the first two dropped), as env steps per second.

- ``sync`` and ``split``: pgkit's :class:`~pgkit.rollout.Collector`, unchanged.
- ``split, the worker's actions sent ahead``: the split backend's two halves, acting on all sub-envs at once as
  the Collector does, but the worker gets its actions for step ``t + 1`` before the bookkeeping of step ``t``, and
  this process steps its half after that bookkeeping, so the worker steps during it.
- ``in turn, k here``: two env groups in turn: ``8 - k`` sub-envs in a worker process (the split backend's worker,
  shared memory and all) and ``k`` here. Each step it acts on the worker's group and sends its actions first, then
  acts on and steps its own group while the worker steps, then takes the worker's results and, before the
  bookkeeping of the step (reward scaling, buffer stores, checks, bootstraps, episode statistics), acts on the
  worker's group again, so the worker steps during the bookkeeping too. The observation statistics are updated group
  by group.
- ``pipelined, envpool``: all sub-envs in envpool's C++ thread pool (:mod:`envpool_vector`), no GIL while they step;
  each step's actions are sent before the bookkeeping of the step before, so the threads step during it.

The prototypes do the Collector's work for this policy in another order (:class:`_Rollout`), and stand in for
its vector env's Python layers with direct calls. The split ones reach into
:class:`~pgkit.environments.split.SplitVectorEnv`'s worker: they measure designs, not product paths
(docs/benchmarks.md, "Both cores", says what they found and why none was adopted). The last column is the time per
step this process waited for the envs' results, median over the same rollouts.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time
from typing import Any

import envpool_vector
import numpy as np
from isolation import isolated

CONFIG = "configs/ppo-fast.yaml"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module(backend: str) -> Any:
    import torch

    from pgkit.config_loading import load_config

    cfg = load_config(os.path.join(ROOT, CONFIG), ["logger.enabled=false", f"env.backend={backend}"])
    torch.set_num_threads(1)
    torch.manual_seed(cfg.trainer.seed)
    module = cfg.init()
    module.setup("fit")  # opens and resets the vector env, as training does
    assert module.use_acting_kernel, "the prototypes act with the compiled acting kernel, as the Collector does here"
    return module


def _median_rollout(module: Any, collect, rollouts: int = 12) -> tuple[float, float | None]:
    """Rollout SPS and the microseconds per step spent waiting for the envs (when ``collect`` returns its seconds
    of waiting), medians over the rollouts after the first two."""
    import torch

    buffer = module.collector.allocate(module.cfg.algorithm.num_steps)
    times, waits = [], []
    with torch.inference_mode():
        for _ in range(rollouts):
            start = time.perf_counter()
            waited = collect(buffer)
            times.append(time.perf_counter() - start)
            waits.append(waited if isinstance(waited, float) else None)
    steps = buffer.batch_size[0]
    wait = None if waits[-1] is None else 1e6 * float(np.median(waits[2:])) / steps
    return buffer.numel() / float(np.median(times[2:])), wait


def collector_sps(backend: str) -> tuple[float, float | None]:
    """Rollout SPS of pgkit's Collector with ``env.backend`` = ``backend``."""
    module = _module(backend)
    try:
        return _median_rollout(module, module.collector.collect)
    finally:
        module.collector.close()


def _uneven_split(module: Any, here: int) -> Any:
    """The split backend's worker with ``n - here`` sub-envs and a ``SyncVectorEnv`` of ``here`` in this process
    (``None`` when 0), reset with the run's seeds; the constructor only makes even halves of at least one each."""
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode, SyncVectorEnv
    from gymnasium.vector.utils import CloudpickleWrapper

    from pgkit.environments import make as make_module
    from pgkit.environments.split import SplitVectorEnv

    cfg, n = module.cfg, module.num_envs
    fns = [functools.partial(make_module._make_indexed, cfg.env.id, cfg.env.kwargs, cfg.env.max_episode_steps, i)
           for i in range(n)]
    envs = SplitVectorEnv.__new__(SplitVectorEnv)
    envs.num_envs, envs._half, envs._autoreset_mode = n, here, AutoresetMode.SAME_STEP
    # _start reads the spaces from the local part: with none, from a probe closed at once
    envs._local = SyncVectorEnv(fns[: max(here, 1)], autoreset_mode=AutoresetMode.SAME_STEP)
    envs._start(CloudpickleWrapper(fns[here:]))
    if not here:
        envs._local.close()
        envs._local = None
    seeds = [cfg.trainer.seed + i for i in range(n)]
    envs._conn.send(("reset", {"seed": seeds[here:], "options": None}))
    mine = envs._local.reset(seed=seeds[:here])[0] if here else np.zeros((0, *envs._views["obs"].shape[1:]))
    module.collector.next_obs = np.concatenate([mine, envs._receive()[0]]).astype(np.float32)
    assert isinstance(envs.single_observation_space, gym.spaces.Box)
    return envs


def split_prototype_sps(here: int, ahead: bool = False) -> tuple[float, float | None]:
    """Rollout SPS of a prototype on the split backend's worker: groups in turn with ``here`` sub-envs in this
    process (:func:`_collect_in_turn`), or with ``ahead`` the worker's actions sent ahead
    (:func:`_collect_ahead`); and the microseconds per step this process waited for the worker."""
    module = _module("sync")
    module.collector.envs.close()
    envs = _uneven_split(module, here)
    try:
        collect = _collect_ahead if ahead else _collect_in_turn
        return _median_rollout(module, functools.partial(collect, module, envs, here))
    finally:
        if envs._local is not None:
            envs._local.close()
        envs._stop_worker()


def pipelined_envpool_sps(threads: int) -> tuple[float, float | None]:
    """Rollout SPS with all sub-envs in envpool's pool of ``threads`` threads (:func:`_collect_pipelined`), and the
    microseconds per step spent waiting for its results."""
    from envpool_vector import EnvpoolVectorEnv

    module = _module("sync")
    collector, cfg = module.collector, module.cfg
    collector.envs.close()
    envs = EnvpoolVectorEnv(cfg.env.id, module.num_envs, cfg.env.kwargs, cfg.env.max_episode_steps, threads)
    collector.next_obs = envs.reset(seed=cfg.trainer.seed)[0].astype(np.float32)
    try:
        return _median_rollout(module, functools.partial(_collect_pipelined, module, envs))
    finally:
        envs.close()


class _Rollout:
    """What the prototypes share: the buffer's columns, acting on some rows, the bookkeeping of a step as the
    Collector does it for this policy, and the time spent waiting for the envs."""

    def __init__(self, module: Any, b: Any) -> None:
        from pgkit.algorithms.kernel_update import ActingKernel

        self.m, self.collector = module, module.collector
        module.begin_rollout()
        self.columns = [b[k] for k in ("obs", "action", "log_prob", "value")]
        self.final_value = b["final_value"]
        self.final_value.zero_()
        self.reward, self.terminated, self.truncated, self.start = (
            b[k].numpy() for k in ("reward", "terminated", "truncated", "episode_start"))
        module.rollout_kernel = ActingKernel(module.acting_policy, module.action_adapter)
        self.state, self.obs = self.collector.state, self.collector.next_obs
        n = module.num_envs
        # each sub-env's return and length so far, kept across rollouts (the vector env's RecordEpisodeStatistics)
        self.sums = self.collector.__dict__.setdefault("prototype_sums", (np.zeros(n), np.zeros(n, dtype=np.int64)))
        self.any_end = np.zeros(n, dtype=bool)
        self.episodes: list[tuple[float, int]] = []
        self.waited = 0.0
        self.steps = b.batch_size[0]

    def act(self, rows: slice, t: int) -> np.ndarray:
        """Normalise ``rows`` of the current observations (updating the statistics), act on them, store the row."""
        m = self.m
        m.obs_normalizer.update(self.obs[rows])
        norm = m.obs_normalizer(self.obs[rows])
        m.mark_step()
        raw, log_prob, value, env_action, _ = m.policy_step(norm, self.state[rows])
        for column, value_ in zip(self.columns, (norm, raw, log_prob, value), strict=True):
            column[t, rows] = value_
        return env_action.cpu().numpy()

    def wait(self, receive):
        """``receive()``, timed."""
        start = time.perf_counter()
        out = receive()
        self.waited += time.perf_counter() - start
        return out

    def finish(self, t: int, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
               info: dict[str, Any]) -> None:
        """The Collector's work on step ``t``'s results, besides acting: checks, reward scaling, stores, bootstrap
        values of truncated episodes, episode statistics, the module's hooks."""
        import torch

        m, collector = self.m, self.collector
        collector._check_finite(self.obs, reward)
        done = terminated | truncated
        m.reward_scaler.update(reward, done)
        self.reward[t] = m.reward_scaler.scale(reward)
        self.terminated[t], self.truncated[t] = terminated, truncated
        bootstrap = np.flatnonzero(truncated & ~terminated)
        if bootstrap.size:
            rows = torch.as_tensor(bootstrap)
            self.final_value[t, rows] = collector._final_value(m.acting_policy, info["final_obs"][bootstrap],
                                                               self.state[rows])
        returns, lengths = self.sums
        returns += reward
        lengths += 1
        self.episodes += [(float(returns[i]), int(lengths[i])) for i in np.flatnonzero(done)]
        returns[done], lengths[done] = 0.0, 0
        collector.episode_start = done
        m.observe_step(info, done)
        self.any_end |= done
        m.rollout_finished(self.any_end)

    def end(self) -> float:
        """Keep the next observations for the next rollout; the seconds spent waiting."""
        self.collector.next_obs = self.obs
        return self.waited


def _worker_results(envs: Any, here: int, mine: tuple | None, info_theirs: dict[str, Any]):
    """This step's results of both parts as one batch (the worker's read out of shared memory before the worker
    is sent its next actions)."""
    from pgkit.environments.split import _join_info

    views = envs._views
    theirs = (views["obs"], views["reward"], views["terminated"], views["truncated"])
    if mine is None:
        return (*(a.copy() for a in theirs), info_theirs)
    joined = [np.concatenate([a, c]) for a, c in zip(mine[:4], theirs, strict=True)]
    return (*joined, _join_info(mine[4], info_theirs, here, envs.num_envs - here))


def _collect_in_turn(module: Any, envs: Any, here: int, b: Any) -> float:
    """One rollout into ``b`` with the groups in turn (see the module docstring); the seconds spent waiting."""
    r = _Rollout(module, b)
    n = module.num_envs
    mine, theirs = slice(0, here), slice(here, n)

    def send(t: int) -> None:
        envs._views["action"][:] = r.act(theirs, t)
        envs._conn.send(("step_shared", None))

    send(0)
    for t in range(r.steps):
        r.start[t] = r.collector.episode_start
        result = envs._local.step(r.act(mine, t)) if here else None
        info_theirs = r.wait(envs._receive) or {}
        next_obs, reward, terminated, truncated, info = _worker_results(envs, here, result, info_theirs)
        r.obs = next_obs.astype(np.float32)
        if t + 1 < r.steps:
            send(t + 1)  # the worker steps while the bookkeeping below runs
        r.finish(t, reward, terminated, truncated, info)
    return r.end()


def _collect_ahead(module: Any, envs: Any, here: int, b: Any) -> float:
    """One rollout into ``b`` through the split backend's two parts, acting on all sub-envs at once as the
    Collector does, but sending the worker its actions for step ``t + 1`` before the bookkeeping of step ``t``
    and stepping this process's part after it: the worker steps during the bookkeeping too."""
    r = _Rollout(module, b)
    everything = slice(None)

    def act_and_send(t: int) -> np.ndarray:
        actions = r.act(everything, t)
        envs._views["action"][:] = actions[here:]
        envs._conn.send(("step_shared", None))
        return actions[:here]

    mine = act_and_send(0)
    for t in range(r.steps):
        r.start[t] = r.collector.episode_start
        result = envs._local.step(mine)
        info_theirs = r.wait(envs._receive) or {}
        next_obs, reward, terminated, truncated, info = _worker_results(envs, here, result, info_theirs)
        r.obs = next_obs.astype(np.float32)
        if t + 1 < r.steps:
            mine = act_and_send(t + 1)
        r.finish(t, reward, terminated, truncated, info)
    return r.end()


def _collect_pipelined(module: Any, envs: Any, b: Any) -> float:
    """One rollout into ``b``: act on step ``t + 1``'s observations and send the actions, then do step ``t``'s
    bookkeeping while envpool's threads step; the seconds spent waiting."""
    r = _Rollout(module, b)
    everything = slice(None)
    envs.step_async(r.act(everything, 0))
    for t in range(r.steps):
        r.start[t] = r.collector.episode_start
        next_obs, reward, terminated, truncated, info = r.wait(envs.step_wait)
        r.obs = next_obs.astype(np.float32)
        if t + 1 < r.steps:
            envs.step_async(r.act(everything, t + 1))
        r.finish(t, reward, terminated, truncated, info)
    return r.end()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cases: dict[str, Any] = {
        "sync (Collector)": (collector_sps, "sync"),
        "split (Collector, 4 + 4)": (collector_sps, "split"),
        "split, the worker's actions sent ahead": (functools.partial(split_prototype_sps, ahead=True), 4),
        "in turn, 4 here + 4 in the worker": (split_prototype_sps, 4),
        "in turn, 2 here + 6 in the worker": (split_prototype_sps, 2),
        "in turn, 0 here + 8 in the worker": (split_prototype_sps, 0),
    }
    if envpool_vector.available():
        cases["pipelined, 8 in envpool (1 thread)"] = (pipelined_envpool_sps, 1)
        cases["pipelined, 8 in envpool (2 threads)"] = (pipelined_envpool_sps, 2)
    runs: dict[str, list[tuple[float, float | None]]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (fn, arg) in cases.items():
            runs[name].append(isolated(fn, arg))
    split = float(np.median([sps for sps, _ in runs["split (Collector, 4 + 4)"]]))
    print(f"# {platform.processor() or platform.machine()}, {CONFIG} rollouts (8 x 256 steps), median of "
          f"{args.repeats} fresh processes")
    print("| rollout loop | rollout SPS | / split | waiting for the envs, per step |")
    print("|---|---:|---:|---:|")
    for name, values in runs.items():
        sps = float(np.median([v for v, _ in values]))
        waits = [w for _, w in values if w is not None]
        wait = f"{np.median(waits):.0f} us" if waits else "-"
        print(f"| {name} | {sps:.0f} | {sps / split:.2f}x | {wait} |")


if __name__ == "__main__":
    main()

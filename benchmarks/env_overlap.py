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

Both prototypes do all of the Collector's work for this policy, in another order. The in-turn one reaches into
:class:`~pgkit.environments.split.SplitVectorEnv`'s worker: they measure designs, not product paths
(docs/benchmarks.md, "Both cores", says what they found and why neither was adopted). The last column is the time per
step this process waited for the envs' results.
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
    return module


def _median_rollout_sps(module: Any, collect, rollouts: int = 12) -> float:
    import torch

    buffer = module.collector.allocate(module.cfg.algorithm.num_steps)
    times = []
    with torch.inference_mode():
        for _ in range(rollouts):
            start = time.perf_counter()
            collect(buffer)
            times.append(time.perf_counter() - start)
    return buffer.numel() / float(np.median(times[2:]))


def collector_sps(backend: str) -> tuple[float, None]:
    """Rollout SPS of pgkit's Collector with ``env.backend`` = ``backend``."""
    module = _module(backend)
    try:
        return _median_rollout_sps(module, module.collector.collect), None
    finally:
        module.collector.close()


def in_turn_sps(here: int, ahead: bool = False) -> tuple[float, float]:
    """Rollout SPS of the two-group prototype with ``here`` sub-envs in this process and the rest in the worker (or,
    with ``ahead``, of the split backend with the worker's actions sent ahead: :func:`_collect_ahead`), and the
    microseconds per step this process waited for the worker (over all rollouts)."""
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode, SyncVectorEnv
    from gymnasium.vector.utils import CloudpickleWrapper

    from pgkit.environments import make as make_module
    from pgkit.environments.split import SplitVectorEnv

    module = _module("sync")
    collector = module.collector
    cfg = module.cfg
    collector.envs.close()
    n = module.num_envs
    fns = [functools.partial(make_module._make_indexed, cfg.env.id, cfg.env.kwargs, None, i) for i in range(n)]
    envs = SplitVectorEnv.__new__(SplitVectorEnv)  # the split backend with an uneven (or empty) local half
    envs.num_envs, envs._half, envs._autoreset_mode = n, here, AutoresetMode.SAME_STEP
    envs._local = SyncVectorEnv(fns[:here], autoreset_mode=AutoresetMode.SAME_STEP) if here else None
    if envs._local is None:
        probe = gym.vector.SyncVectorEnv(fns[:1], autoreset_mode=AutoresetMode.SAME_STEP)
        envs._local = probe  # only for the spaces _start reads; closed at once
        envs._start(CloudpickleWrapper(fns))
        probe.close()
        envs._local = None
    else:
        envs._start(CloudpickleWrapper(fns[here:]))
    seeds = [cfg.trainer.seed + i for i in range(n)]
    envs._conn.send(("reset", {"seed": seeds[here:], "options": None}))
    local_obs = envs._local.reset(seed=seeds[:here])[0] if here else np.zeros((0, *envs._views["obs"].shape[1:]))
    collector.next_obs = np.concatenate([local_obs, envs._receive()[0]]).astype(np.float32)
    try:
        collect = _collect_ahead if ahead else _collect_in_turn
        sps = _median_rollout_sps(module, functools.partial(collect, module, envs, here))
        return sps, 1e6 * WAITED[0] / WAITED[1]
    finally:
        if envs._local is not None:
            envs._local.close()
        envs._stop_worker()


def _episode_statistics(collector: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each sub-env's return and length so far (kept across rollouts on the collector)."""
    if not hasattr(collector, "_prototype_episodes"):
        collector._prototype_episodes = (np.zeros(n), np.zeros(n, dtype=np.int64))
    return collector._prototype_episodes


def _host_views(b: Any) -> dict[str, Any]:
    """The rollout columns the bookkeeping writes: numpy views of the flags and rewards, as the Collector takes."""
    b["final_value"].zero_()
    return {"final_value": b["final_value"], **{k: b[k].numpy() for k in ("reward", "terminated", "truncated")}}


def _finish_step(module: Any, host: dict[str, Any], t: int, obs: np.ndarray, reward: np.ndarray,
                 terminated: np.ndarray, truncated: np.ndarray, info: dict[str, Any],
                 stats: tuple[np.ndarray, np.ndarray]) -> None:
    """The Collector's bookkeeping of step ``t`` for this policy: checks, reward scaling, buffer stores, bootstrap
    values of truncated episodes, episode statistics (the vector env's ``RecordEpisodeStatistics`` in pgkit)."""
    import torch

    collector = module.collector
    collector._check_finite(obs, reward)
    done = terminated | truncated
    module.reward_scaler.update(reward, done)
    host["reward"][t] = module.reward_scaler.scale(reward)
    host["terminated"][t], host["truncated"][t] = terminated, truncated
    bootstrap = np.flatnonzero(truncated & ~terminated)
    if bootstrap.size:
        rows = torch.as_tensor(bootstrap)
        host["final_value"][t, rows] = collector._final_value(module.acting_policy, info["final_obs"][bootstrap],
                                                           collector.state[rows])
    returns, lengths = stats
    returns += reward
    lengths += 1
    collector.prototype_episodes = [(float(returns[i]), int(lengths[i])) for i in np.flatnonzero(done)]
    returns[done], lengths[done] = 0.0, 0
    collector.episode_start = done


WAITED = [0.0, 0]
"""Seconds this process spent waiting for the worker's results, and the steps: the share of a step the worker's
group takes beyond this process's own work."""


def _collect_in_turn(module: Any, envs: Any, here: int, b: Any) -> None:
    """One rollout into ``b`` with the groups in turn (see the module docstring)."""
    from pgkit.algorithms.kernel_update import ActingKernel
    from pgkit.environments.split import _join_info

    m, collector = module, module.collector
    n = m.num_envs
    mine, theirs = slice(0, here), slice(here, n)
    obs_b, act_b, logp_b, val_b = (b[k] for k in ("obs", "action", "log_prob", "value"))
    host, start_s = _host_views(b), b["episode_start"].numpy()
    m.rollout_kernel = ActingKernel(m.acting_policy, m.action_adapter)
    state, views, obs = collector.state, envs._views, collector.next_obs
    stats = _episode_statistics(collector, n)

    def act(rows: slice, t: int) -> np.ndarray:
        m.obs_normalizer.update(obs[rows])
        norm = m.obs_normalizer(obs[rows])
        raw, log_prob, value, env_action, _ = m.policy_step(norm, state[rows])
        obs_b[t, rows], act_b[t, rows], logp_b[t, rows], val_b[t, rows] = norm, raw, log_prob, value
        return env_action.numpy()

    def send(t: int) -> None:
        views["action"][:] = act(theirs, t)
        envs._conn.send(("step_shared", None))

    send(0)
    steps = b.batch_size[0]
    for t in range(steps):
        start_s[t] = collector.episode_start
        if here:
            result = envs._local.step(act(mine, t))
        waited = time.perf_counter()
        info_theirs = envs._receive() or {}
        WAITED[0] += time.perf_counter() - waited
        WAITED[1] += 1
        their = (views["obs"], views["reward"], views["terminated"], views["truncated"])
        if here:
            joined = (np.concatenate([a, c]) for a, c in zip(result[:4], their, strict=True))
            next_obs, reward, terminated, truncated = joined
            info = _join_info(result[4], info_theirs, here, n - here)
        else:
            next_obs, reward, terminated, truncated = (a.copy() for a in their)
            info = info_theirs
        obs = next_obs.astype(np.float32)
        if t + 1 < steps:
            send(t + 1)  # the worker steps while the bookkeeping below runs
        _finish_step(module, host, t, obs, reward, terminated, truncated, info, stats)
    collector.next_obs = obs


def _collect_ahead(module: Any, envs: Any, here: int, b: Any) -> None:
    """One rollout into ``b`` through the split backend's two parts, acting on all sub-envs at once as the
    Collector does, but sending the worker its actions for step ``t + 1`` before the bookkeeping of step ``t``
    and stepping this process's part after it: the worker steps during the bookkeeping too."""
    from pgkit.algorithms.kernel_update import ActingKernel
    from pgkit.environments.split import _join_info

    m, collector = module, module.collector
    n = m.num_envs
    obs_b, act_b, logp_b, val_b = (b[k] for k in ("obs", "action", "log_prob", "value"))
    host, start_s = _host_views(b), b["episode_start"].numpy()
    m.rollout_kernel = ActingKernel(m.acting_policy, m.action_adapter)
    state, views, obs = collector.state, envs._views, collector.next_obs
    stats = _episode_statistics(collector, n)

    def act_and_send(t: int) -> np.ndarray:
        m.obs_normalizer.update(obs)
        norm = m.obs_normalizer(obs)
        raw, log_prob, value, env_action, _ = m.policy_step(norm, state)
        obs_b[t], act_b[t], logp_b[t], val_b[t] = norm, raw, log_prob, value
        actions = env_action.numpy()
        views["action"][:] = actions[here:]
        envs._conn.send(("step_shared", None))
        return actions[:here]

    mine = act_and_send(0)
    steps = b.batch_size[0]
    for t in range(steps):
        start_s[t] = collector.episode_start
        result = envs._local.step(mine)
        waited = time.perf_counter()
        info_theirs = envs._receive() or {}
        WAITED[0] += time.perf_counter() - waited
        WAITED[1] += 1
        their = (views["obs"], views["reward"], views["terminated"], views["truncated"])
        next_obs, reward, terminated, truncated = (np.concatenate([a, c]) for a, c in zip(result[:4], their,
                                                                                            strict=True))
        info = _join_info(result[4], info_theirs, here, n - here)
        obs = next_obs.astype(np.float32)
        if t + 1 < steps:
            mine = act_and_send(t + 1)
        _finish_step(module, host, t, obs, reward, terminated, truncated, info, stats)
    collector.next_obs = obs


def pipelined_envpool_sps(threads: int) -> tuple[float, float]:
    """Rollout SPS with all sub-envs in envpool's pool of ``threads`` threads, each step's actions sent before the
    bookkeeping of the step before (:func:`_collect_pipelined`), and the microseconds per step spent waiting."""
    from envpool_vector import EnvpoolVectorEnv

    module = _module("sync")
    collector = module.collector
    collector.envs.close()
    envs = EnvpoolVectorEnv(module.cfg.env.id, module.num_envs, num_threads=threads)
    collector.next_obs = envs.reset(seed=module.cfg.trainer.seed)[0].astype(np.float32)
    try:
        sps = _median_rollout_sps(module, functools.partial(_collect_pipelined, module, envs))
        return sps, 1e6 * WAITED[0] / WAITED[1]
    finally:
        envs.close()


def _collect_pipelined(module: Any, envs: Any, b: Any) -> None:
    """One rollout into ``b``: act on step ``t + 1``'s observations and send the actions, then do step ``t``'s
    bookkeeping while envpool's threads step."""
    from pgkit.algorithms.kernel_update import ActingKernel

    m, collector = module, module.collector
    obs_b, act_b, logp_b, val_b = (b[k] for k in ("obs", "action", "log_prob", "value"))
    host, start_s = _host_views(b), b["episode_start"].numpy()
    m.rollout_kernel = ActingKernel(m.acting_policy, m.action_adapter)
    state, obs = collector.state, collector.next_obs
    stats = _episode_statistics(collector, m.num_envs)

    def act(t: int) -> np.ndarray:
        m.obs_normalizer.update(obs)
        norm = m.obs_normalizer(obs)
        raw, log_prob, value, env_action, _ = m.policy_step(norm, state)
        obs_b[t], act_b[t], logp_b[t], val_b[t] = norm, raw, log_prob, value
        return env_action.numpy()

    envs.step_async(act(0))
    steps = b.batch_size[0]
    for t in range(steps):
        start_s[t] = collector.episode_start
        waited = time.perf_counter()
        next_obs, reward, terminated, truncated, info = envs.step_wait()
        WAITED[0] += time.perf_counter() - waited
        WAITED[1] += 1
        obs = next_obs.astype(np.float32)
        if t + 1 < steps:
            envs.step_async(act(t + 1))
        _finish_step(module, host, t, obs, reward, terminated, truncated, info, stats)
    collector.next_obs = obs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cases: dict[str, Any] = {
        "sync (Collector)": (collector_sps, "sync"),
        "split (Collector, 4 + 4)": (collector_sps, "split"),
        "split, the worker's actions sent ahead": (functools.partial(in_turn_sps, ahead=True), 4),
        "in turn, 4 here + 4 in the worker": (in_turn_sps, 4),
        "in turn, 2 here + 6 in the worker": (in_turn_sps, 2),
        "in turn, 0 here + 8 in the worker": (in_turn_sps, 0),
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
    print("| rollout loop | rollout SPS | / split | waiting for the worker, per step |")
    print("|---|---:|---:|---:|")
    for name, values in runs.items():
        sps = float(np.median([v for v, _ in values]))
        waits = [w for _, w in values if w is not None]
        wait = f"{np.median(waits):.0f} us" if waits else "-"
        print(f"| {name} | {sps:.0f} | {sps / split:.2f}x | {wait} |")


if __name__ == "__main__":
    main()

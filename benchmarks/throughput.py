"""Throughput: pgkit PPO against Stable-Baselines3 PPO on identical hyperparameters, in the same run.

Run: ``pip install -e ".[bench]" -c constraints.txt && python benchmarks/throughput.py``

Both learners train PPO on one HalfCheetah-v5 env with 2048 steps per rollout, 10 epochs of minibatches of 64,
observation and reward normalisation, [64, 64] tanh actor and critic, on CPU with the same ``torch.set_num_threads``,
for the same number of steps. Each is timed from construction to the end of training (pgkit: ``fit``, with its
Trainer set-up and a checkpoint every iteration; SB3: env, ``VecNormalize`` and model construction, then ``learn``),
with MLflow logging and evaluation off. The two alternate ``--repeats`` times; medians are reported. Also printed:

- the raw SPS of the same env stepped with random actions (the physical limit of one env in one process);
- pgkit's fastest preset (``configs/ppo-fast.yaml``) against SB3 PPO with the same shape (sub-envs, rollout length,
  epochs, minibatch size, hyperparameters), alternating as above, beside the raw SPS of the same vector env with
  random actions.

Each measurement runs in a fresh process (``spawn``), so none inherits another's threads, caches or allocator.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from isolation import isolated

ROOT = Path(__file__).resolve().parent.parent


def raw_env_sps(env_id: str, num_envs: int, vectorization: str, steps: int) -> float:
    """Steps per second of the vector env alone, with actions sampled in advance (``vectorization`` is an
    ``env.backend``)."""
    from pgkit.environments import make_vec_env

    envs = make_vec_env(env_id, num_envs, vectorization)
    envs.reset(seed=0)
    envs.action_space.seed(0)
    actions = [envs.action_space.sample() for _ in range(256)]
    iterations = max(1, steps // num_envs)
    start = time.perf_counter()
    for i in range(iterations):
        envs.step(actions[i % len(actions)])
    elapsed = time.perf_counter() - start
    envs.close()
    return iterations * num_envs / elapsed


def sb3_ppo_sps(
    env_id: str, steps: int, threads: int, seed: int, n_envs: int = 1, n_steps: int = 2048, batch_size: int = 64
) -> float:
    """SB3 PPO with the shared hyperparameters (its MlpPolicy default is [64, 64] tanh, orthogonal init); its sub-envs
    in one process (``DummyVecEnv``: on 2 cores its ``SubprocVecEnv`` of one process per env is slower)."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(threads)
    start = time.perf_counter()  # from construction, as pgkit's figure (which includes building its Trainer)
    env = VecNormalize(make_vec_env(env_id, n_envs=n_envs, seed=seed), norm_obs=True, norm_reward=True, gamma=0.99)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=n_steps,
        batch_size=batch_size,
        n_epochs=10,
        learning_rate=3e-4,
        gamma=0.99,
        gae_lambda=0.95,
        clip_range=0.2,
        ent_coef=0.0,
        vf_coef=0.5,
        max_grad_norm=0.5,
        device="cpu",
        seed=seed,
        verbose=0,
    )
    model.learn(total_timesteps=steps)
    elapsed = time.perf_counter() - start
    return model.num_timesteps / elapsed


def pgkit_sps(config: str, overrides: list[str], steps: int, threads: int) -> float:
    """pgkit ``fit`` on ``config`` with MLflow and evaluation off, timed around the whole call."""
    from pgkit.config_loading import load_config
    from pgkit.training import fit

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            ROOT / config,
            [
                *overrides,
                f"trainer.total_timesteps={steps}",
                f"trainer.torch_threads={threads}",
                f"trainer.output_dir={tmp}",
                "logger.enabled=false",
                "eval.every_n_iterations=0",
                "checkpoint.save_best=false",
            ],
        )
        start = time.perf_counter()
        result = fit(cfg)
        elapsed = time.perf_counter() - start
    return result.env_steps / elapsed


def median_row(rows: list[tuple[str, float]], label: str, values: list[float]) -> float | None:
    """Append ``label`` with the median of ``values`` and the values themselves; the median (None if none ran)."""
    if not values:
        return None
    median = statistics.median(values)
    rows.append((f"{label}, median of [{', '.join(f'{v:.0f}' for v in values)}]", median))
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--steps", type=int, default=40960, help="training steps per learner (default 40960)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each learner (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for both learners")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fast-config", default="configs/ppo-fast.yaml")
    parser.add_argument("--fast-steps", type=int, default=163840, help="steps for the fast preset")
    parser.add_argument("--skip-sb3", action="store_true", help="only measure pgkit and the raw env")
    args = parser.parse_args()

    import yaml

    fast = yaml.safe_load((ROOT / args.fast_config).read_text())
    fast_envs, fast_vec = fast["env"]["num_envs"], fast["env"].get("backend", "sync")

    print(f"# {args.env}, {args.steps} steps per learner, torch threads {args.threads}, {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}, {args.repeats} alternating repeats")
    rows: list[tuple[str, float]] = []
    raw1 = statistics.median(isolated(raw_env_sps, args.env, 1, "sync", 30000) for _ in range(3))
    rows.append(("raw env, 1 env, random actions (median of 3)", raw1))
    pgs, sb3s = [], []
    for _ in range(args.repeats):
        pgs.append(isolated(pgkit_sps, "configs/ppo.yaml", [f"env.id={args.env}"], args.steps, args.threads))
        if not args.skip_sb3:
            sb3s.append(isolated(sb3_ppo_sps, args.env, args.steps, args.threads, args.seed))
    pg = median_row(rows, "pgkit PPO, 1 env (configs/ppo.yaml)", pgs)
    sb3 = median_row(rows, "SB3 PPO, 1 env, same hyperparameters", sb3s)
    rawn = statistics.median(isolated(raw_env_sps, args.env, fast_envs, fast_vec, 80000) for _ in range(3))
    rows.append((f"raw vector env, {fast_envs} {fast_vec} envs, random actions (median of 3)", rawn))
    fast_threads = fast["trainer"]["torch_threads"]
    algo = fast["algorithm"]
    shape = dict(n_envs=fast_envs, n_steps=algo["num_steps"],
                 batch_size=algo["num_steps"] * fast_envs // algo["num_minibatches"])
    pfs, sb3fs = [], []
    for _ in range(args.repeats):
        pfs.append(isolated(pgkit_sps, args.fast_config, [f"env.id={args.env}"], args.fast_steps, fast_threads))
        if not args.skip_sb3:
            sb3fs.append(isolated(sb3_ppo_sps, args.env, args.fast_steps, fast_threads, args.seed, *shape.values()))
    pf = median_row(rows, f"pgkit PPO fast preset ({args.fast_config}, backend {fast_vec})", pfs)
    sb3f = median_row(rows, f"SB3 PPO, the fast preset's shape ({fast_envs} envs, {algo['num_steps']} steps, "
                      f"minibatches of {shape['batch_size']})", sb3fs)

    width = max(len(name) for name, _ in rows)
    for name, sps in rows:
        print(f"{name:<{width}}  {sps:10.0f} SPS")
    if sb3 is not None:
        print(f"pgkit / SB3 (same hyperparameters): {pg / sb3:.2f}x")
    print(f"pgkit / raw env (1 env): {pg / raw1:.0%}")
    if sb3f is not None:
        print(f"pgkit fast preset / SB3 with its shape: {pf / sb3f:.2f}x")
    print(f"pgkit fast preset / raw vector env: {pf / rawn:.0%}")


if __name__ == "__main__":
    main()

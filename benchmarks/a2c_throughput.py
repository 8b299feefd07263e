"""Throughput: pgkit A2C against Stable-Baselines3 A2C on identical hyperparameters, in the same run.

Run: ``pip install -e ".[bench]" -c constraints.txt && python benchmarks/a2c_throughput.py``

Both learners train A2C with ``configs/a2c.yaml``'s settings, read from the file (Tianshou's MuJoCo A2C with no
entropy bonus and log-std starting at -1): 16 sub-envs (pgkit: the config's ``env.backend``, ``split`` on two
cores; SB3: ``DummyVecEnv``, its fastest here), 5 steps each per update, RMSprop (lr 7e-4 annealed linearly, alpha
0.99, eps 1e-5), GAE lambda 0.95, value 0.5, gradient norm 0.5, observation and reward normalisation, [64, 64] tanh
actor and critic with orthogonal init, on CPU with the same ``torch.set_num_threads``, for the same number of
steps. Each is timed from construction to the end of training (pgkit: ``fit``, with its Trainer set-up and
checkpoints; SB3: env, ``VecNormalize`` and model construction, then ``learn``), with MLflow logging and evaluation
off. The two alternate ``--repeats`` times, each in a fresh process; medians are reported, beside the raw SPS of
the same 16 envs stepped with random actions in one process.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

from isolation import isolated
from throughput import pgkit_sps, raw_env_sps

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/a2c.yaml"


def sb3_a2c_sps(env_id: str, steps: int, threads: int, seed: int, num_envs: int) -> float:
    """SB3 A2C with ``configs/a2c.yaml``'s hyperparameters (SB3's A2C uses RMSprop(alpha 0.99, eps 1e-5) already)."""
    import torch
    import yaml
    from stable_baselines3 import A2C
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    cfg = yaml.safe_load((ROOT / CONFIG).read_text())
    a, p = cfg["algorithm"], cfg["policy"]
    torch.set_num_threads(threads)
    start = time.perf_counter()
    env = VecNormalize(make_vec_env(env_id, n_envs=num_envs, seed=seed), norm_obs=True, norm_reward=True,
                       gamma=a["gamma"])
    lr = float(a["learning_rate"])
    model = A2C(
        "MlpPolicy",
        env,
        learning_rate=(lambda progress: lr * progress) if a.get("anneal_lr") else lr,
        n_steps=a["num_steps"],
        gamma=a["gamma"],
        gae_lambda=a["gae_lambda"],
        ent_coef=a["ent_coef"],
        vf_coef=a["vf_coef"],
        max_grad_norm=a["max_grad_norm"],
        normalize_advantage=a.get("normalize_advantage", False),
        policy_kwargs={
            "net_arch": {"pi": list(p["actor_hidden"]), "vf": list(p["critic_hidden"])},
            "activation_fn": torch.nn.Tanh,
            "ortho_init": p["ortho_init"],
            "log_std_init": p["log_std_init"],
        },
        device="cpu",
        seed=seed,
        verbose=0,
    )
    model.learn(total_timesteps=steps)
    elapsed = time.perf_counter() - start
    return model.num_timesteps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--steps", type=int, default=80000, help="training steps per learner (default 80000)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each learner (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for both learners")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    import yaml

    num_envs = yaml.safe_load((ROOT / CONFIG).read_text())["env"]["num_envs"]
    print(f"# A2C ({CONFIG}) on {args.env}, {num_envs} envs, {args.steps} steps per learner, torch threads "
          f"{args.threads}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}, {args.repeats} "
          "alternating repeats")
    raw = statistics.median(isolated(raw_env_sps, args.env, num_envs, "sync", 40000) for _ in range(3))
    # the sync figure: what one process can step (the split backend's own is in benchmarks/env_backends.py)
    pgs, sb3s = [], []
    for _ in range(args.repeats):
        pgs.append(isolated(pgkit_sps, CONFIG, [f"env.id={args.env}"], args.steps, args.threads))
        sb3s.append(isolated(sb3_a2c_sps, args.env, args.steps, args.threads, args.seed, num_envs))
    pg, sb3 = statistics.median(pgs), statistics.median(sb3s)
    rows = [
        (f"raw vector env, {num_envs} sync envs, random actions (median of 3)", raw),
        (f"pgkit A2C, median of [{', '.join(f'{v:.0f}' for v in pgs)}]", pg),
        (f"SB3 A2C, same hyperparameters, median of [{', '.join(f'{v:.0f}' for v in sb3s)}]", sb3),
    ]
    width = max(len(name) for name, _ in rows)
    for name, sps in rows:
        print(f"{name:<{width}}  {sps:10.0f} SPS")
    print(f"pgkit / SB3 (same hyperparameters): {pg / sb3:.2f}x")
    print(f"pgkit / raw vector env: {pg / raw:.0%}")


if __name__ == "__main__":
    main()

"""Recurrent PPO: pgkit against sb3-contrib's RecurrentPPO on the same POMDPs, in the same run.

Run: ``pip install -e ".[bench]" -c constraints.txt && python benchmarks/recurrent.py``

Both learners train an LSTM policy on CartPole and Pendulum with the velocities removed (``pgkit/CartPoleNoVel-v1``,
``pgkit/PendulumNoVel-v1``) with identical hyperparameters, RL Zoo's ``ppo_lstm`` settings for ``CartPoleNoVel-v1``
and ``PendulumNoVel-v1`` with two changes made for both: an LSTM of ``--hidden`` units (RL Zoo: 256; 64 keeps
sb3-contrib's runs within minutes) and no gSDE (pgkit has none), and constant clip ranges. Architecture: the
observation into an LSTM, a separate LSTM for the critic (sb3-contrib's default ``enable_critic_lstm``), [64, 64]
tanh MLPs, orthogonal init of the MLPs and heads, no observation or reward normalisation. pgkit replays each env's
rollout in chunks as long as sb3-contrib's sequences (``bptt_horizon``: 32 steps for CartPole, the whole batch of
one minibatch of 256; 128 for Pendulum, sb3-contrib's ``batch_size``). ``--fast`` adds pgkit with 8-step chunks.

Each (learner, env, seed) runs in a fresh process, learners alternating, one torch thread each, MLflow and
evaluation off; the wall clock runs from construction to the end of training. It prints, per env and learner, the
mean over seeds of the SPS and of the training return (all episodes, and the last 20), writes every episode's
(env step, return) to ``--output``/returns.csv, and draws return against env steps per env (``--output``/
recurrent-<env>.png).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from isolation import isolated

ROOT = Path(__file__).resolve().parent.parent

#: Shared hyperparameters per env (RL Zoo's ppo_lstm, see the module docstring).
SETTINGS = {
    "pgkit/CartPoleNoVel-v1": dict(num_envs=8, num_steps=32, minibatch=256, epochs=20, gamma=0.98, gae_lambda=0.8,
                                   learning_rate=1e-3, anneal=True, steps=100_000),
    "pgkit/PendulumNoVel-v1": dict(num_envs=4, num_steps=1024, minibatch=128, epochs=10, gamma=0.9, gae_lambda=0.95,
                                   learning_rate=1e-3, anneal=False, steps=100_000),
}


def run_pgkit(env_id: str, seed: int, hidden: int, steps: int, bptt: int | None = None) -> dict:
    """pgkit recurrent PPO; ``bptt`` defaults to sb3-contrib's sequence length for the env."""
    from pgkit.config_loading import load_config
    from pgkit.training import fit

    s = SETTINGS[env_id]
    batch = s["num_envs"] * s["num_steps"]
    horizon = bptt or min(s["num_steps"], s["minibatch"])
    chunks = batch // horizon
    minibatches = batch // s["minibatch"]
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            f"env.id={env_id}", f"env.num_envs={s['num_envs']}", "env.normalize_obs=false",
            "env.normalize_reward=false", f"algorithm.num_steps={s['num_steps']}",
            f"algorithm.bptt_horizon={horizon}", f"algorithm.num_minibatches={min(minibatches, chunks)}",
            f"algorithm.update_epochs={s['epochs']}", f"algorithm.gamma={s['gamma']}",
            f"algorithm.gae_lambda={s['gae_lambda']}", f"algorithm.learning_rate={s['learning_rate']}",
            f"algorithm.anneal_lr={str(s['anneal']).lower()}", "algorithm.ent_coef=0.0",
            f"policy.recurrent={{hidden_size: {hidden}}}", f"trainer.total_timesteps={steps}", f"trainer.seed={seed}",
            "trainer.torch_threads=1", f"trainer.output_dir={tmp}", "logger.enabled=false",
            "eval.every_n_iterations=0", "checkpoint.save_best=false", "checkpoint.every_n_iterations=1000000",
        ]
        start = time.perf_counter()
        cfg = load_config(None, overrides, base={"algorithm": {"name": "ppo"}})
        result = fit(cfg)
        elapsed = time.perf_counter() - start
    return {"sps": result.env_steps / elapsed, "episodes": list(zip(result.episode_steps, result.episode_returns,
                                                                     strict=True))}


def run_sb3(env_id: str, seed: int, hidden: int, steps: int) -> dict:
    """sb3-contrib RecurrentPPO with the same settings."""
    import torch
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    import pgkit  # noqa: F401  (registers the no-velocity envs)

    torch.set_num_threads(1)
    s = SETTINGS[env_id]
    episodes: list[tuple[int, float]] = []

    class Record(BaseCallback):
        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    episodes.append((self.num_timesteps, float(info["episode"]["r"])))
            return True

    def schedule(value: float):
        return (lambda progress: progress * value) if s["anneal"] else value

    start = time.perf_counter()
    env = make_vec_env(env_id, n_envs=s["num_envs"], seed=seed)
    model = RecurrentPPO(
        "MlpLstmPolicy", env, n_steps=s["num_steps"], batch_size=s["minibatch"], n_epochs=s["epochs"],
        gamma=s["gamma"], gae_lambda=s["gae_lambda"], learning_rate=schedule(s["learning_rate"]), clip_range=0.2,
        ent_coef=0.0, policy_kwargs={"lstm_hidden_size": hidden}, seed=seed, device="cpu", verbose=0,
    )
    model.learn(total_timesteps=steps, callback=Record())
    elapsed = time.perf_counter() - start
    return {"sps": model.num_timesteps / elapsed, "episodes": episodes}


def plot(env_id: str, curves: dict[str, list[list[tuple[int, float]]]], path: Path) -> None:
    """Return against env steps: per learner, each seed's rolling mean of 20 episodes on a common grid, averaged."""
    import numpy as np

    from pgkit.plotting import return_figure, save_return_figure

    fig, ax = return_figure()
    total = SETTINGS[env_id]["steps"]
    grid = np.linspace(total / 50, total, 50)
    for learner, runs in curves.items():
        per_seed = []
        for episodes in runs:
            steps = np.array([s for s, _ in episodes])
            returns = np.array([r for _, r in episodes])
            rolling = np.array([returns[max(0, i - 19) : i + 1].mean() for i in range(len(returns))])
            per_seed.append(np.interp(grid, steps, rolling))
        mean = np.mean(per_seed, axis=0)
        ax.plot(grid, mean, label=f"{learner} ({len(runs)} seeds)")
        if len(per_seed) > 1:
            ax.fill_between(grid, np.min(per_seed, axis=0), np.max(per_seed, axis=0), alpha=0.2)
    ax.set_title(env_id)
    save_return_figure(fig, ax, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", default=",".join(SETTINGS), help="comma-separated, from: " + ", ".join(SETTINGS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64, help="LSTM units, both learners (RL Zoo: 256)")
    parser.add_argument("--steps", type=int, default=None, help="env steps per run (default: per env, 100k)")
    parser.add_argument("--fast", action="store_true", help="also run pgkit with 8-step BPTT chunks")
    parser.add_argument("--output", default="bench/recurrent")
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    print(f"# recurrent PPO, LSTM {args.hidden}, {args.seeds} seeds, 1 torch thread, {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}")
    rows = []
    with open(out / "returns.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["env", "learner", "seed", "env_step", "return"])
        for env_id in args.envs.split(","):
            steps = args.steps or SETTINGS[env_id]["steps"]
            learners = {"pgkit": lambda seed, e=env_id, n=steps: isolated(run_pgkit, e, seed, args.hidden, n),
                        "sb3-contrib": lambda seed, e=env_id, n=steps: isolated(run_sb3, e, seed, args.hidden, n)}
            if args.fast:
                learners["pgkit, 8-step chunks"] = lambda seed, e=env_id, n=steps: isolated(
                    run_pgkit, e, seed, args.hidden, n, 8)
            results: dict[str, list[dict]] = {name: [] for name in learners}
            for seed in range(1, args.seeds + 1):
                for name, learn in learners.items():  # alternate learners within each seed
                    result = learn(seed)
                    results[name].append(result)
                    writer.writerows([env_id, name, seed, s, r] for s, r in result["episodes"])
                    print(f"  {env_id} {name} seed {seed}: {result['sps']:.0f} SPS", flush=True)
            for name, runs in results.items():
                returns = [[r for _, r in run["episodes"]] for run in runs]
                rows.append((env_id, name, statistics.mean(run["sps"] for run in runs),
                             statistics.mean(statistics.mean(r) for r in returns),
                             statistics.mean(statistics.mean(r[-20:]) for r in returns)))
            plot(env_id, {name: [run["episodes"] for run in runs] for name, runs in results.items()},
                 out / f"recurrent-{env_id.split('/')[-1]}.png")
    print(f"{'env':<24} {'learner':<22} {'SPS':>7} {'return, all':>12} {'return, last 20':>16}")
    for env_id, name, sps, mean_all, last in rows:
        print(f"{env_id:<24} {name:<22} {sps:7.0f} {mean_all:12.1f} {last:16.1f}")
    for env_id in args.envs.split(","):
        by = {name: sps for e, name, sps, _, _ in rows if e == env_id}
        ratios = ", ".join(f"{name} / sb3-contrib {sps / by['sb3-contrib']:.2f}x" for name, sps in by.items()
                           if name != "sb3-contrib")
        print(f"{env_id}: {ratios}")


if __name__ == "__main__":
    main()

"""Hyperparameter search, pgkit against RL Zoo: ``pgkit sweep`` and RL Baselines3 Zoo's ``-optimize`` (Optuna inside
both) on the same env, trial count, step budget per trial, parameter ranges, sampler and pruner, one after the other.

Run: ``pip install -e ".[bench]" -c constraints.txt && python benchmarks/sweep_vs_rlzoo.py`` (about 15 minutes on
2 cores with the defaults).

What is held equal:

- **Env and fixed hyperparameters:** CartPole-v1 with RL Zoo's own tuned PPO entry (rl_zoo3 2.9.2,
  ``hyperparams/ppo.yml``: 8 envs x 32 steps, one minibatch of 256, gamma 0.98, no entropy bonus, clip 0.2, MLP
  64x64 tanh), which ``configs/sweep-cartpole.yaml`` copies; no observation or reward normalisation on either side.
- **The search space** (:data:`SPACE`, ``configs/sweep-cartpole.yaml``'s): learning rate (log-uniform), GAE lambda
  (uniform) and epochs (choices), given to pgkit as the config's ``sweep.params`` and to RL Zoo as its PPO sampler
  (``HYPERPARAMS_SAMPLER["ppo"]``, replaced in its process before ``train()`` runs).
- **Trials, steps, evaluation:** ``--trials`` trials of ``--steps`` env steps; ``--evaluations`` deterministic
  evaluations of ``--eval-episodes`` episodes per trial; a trial's value is its last evaluation's mean return (RL
  Zoo's ``TrialEvalCallback`` and pgkit's ``eval/mean_return`` both). Pgkit evaluates every ``steps / (256 *
  evaluations)`` iterations, which is RL Zoo's ``eval_freq`` in steps.
- **Sampler and pruner:** TPE and the median pruner with 5 startup trials. RL Zoo's warm-up (``n_evaluations //
  3`` evaluations, reported from index 1) lets it prune from a trial's first evaluation with 5 evaluations; pgkit's
  ``sweep.prune_warmup`` (0.1 of the steps) does the same.
- **Parallelism:** ``--jobs`` trials at once, each tool its own way: RL Zoo's ``--n-jobs`` (threads in one process,
  ``--num-threads 1`` each) and pgkit's ``--workers`` (processes, one torch thread each).
- **Tracking:** each tool records what it records by default: RL Zoo its logs folder and study, pgkit an MLflow
  run per trial (with the policy model) under a parent run.

Wall-clock is the whole command, process start-up included. Both studies live in fresh sqlite files. Results are
written to ``--results`` (JSON, with the commit, the machine and the arguments).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import yaml

ROOT = Path(__file__).resolve().parent.parent

CONFIG = ROOT / "configs" / "sweep-cartpole.yaml"
#: The search space of configs/sweep-cartpole.yaml; RL Zoo gets the same through its sampler (SB3 names in ZOO_NAMES).
SPACE: dict[str, dict[str, Any]] = yaml.safe_load(CONFIG.read_text())["sweep"]["params"]
ZOO_NAMES = {"algorithm.learning_rate": "learning_rate", "algorithm.gae_lambda": "gae_lambda",
             "algorithm.update_epochs": "n_epochs"}

_ZOO_RUNNER = """
import json, sys
import rl_zoo3.hyperparams_opt as ho
from rl_zoo3.train import train

space, names = json.loads(sys.argv[1]), json.loads(sys.argv[2])

def sample(trial, n_actions, n_envs, additional_args):
    out = {}
    for path, spec in space.items():
        name = names[path]
        if "choices" in spec:
            out[name] = trial.suggest_categorical(path, spec["choices"])
        else:
            out[name] = trial.suggest_float(path, spec["low"], spec["high"], log=spec.get("log", False))
    return out

ho.HYPERPARAMS_SAMPLER["ppo"] = sample
sys.argv = ["train", *sys.argv[3:]]
train()
"""


def run_zoo(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    storage = f"sqlite:///{folder / 'zoo.db'}"
    command = [
        sys.executable, "-c", _ZOO_RUNNER, json.dumps(SPACE), json.dumps(ZOO_NAMES),
        "--algo", "ppo", "--env", "CartPole-v1", "-optimize", "--n-trials", str(args.trials), "-n", str(args.steps),
        "--sampler", "tpe", "--pruner", "median", "--n-startup-trials", "5", "--n-jobs", str(args.jobs),
        "--n-evaluations", str(args.evaluations), "--eval-episodes", str(args.eval_episodes), "--seed",
        str(args.seed), "-f", str(folder / "zoo-logs"), "--no-optim-plots", "--storage", storage, "--study-name",
        "zoo", "--num-threads", "1", "--device", "cpu", "-params", "clip_range:0.2",
    ]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=folder, capture_output=True, text=True, env={**os.environ,
                                                                                  "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - started
    if proc.returncode:
        raise RuntimeError(f"RL Zoo failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"wall_s": wall, **_summary(optuna.load_study(study_name="zoo", storage=storage))}


def run_pgkit(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    base = yaml.safe_load(CONFIG.read_text())
    iterations = args.steps // (base["algorithm"]["num_steps"] * base["env"]["num_envs"])
    base["trainer"].update(total_timesteps=args.steps, seed=args.seed, name="cartpole")
    base["eval"] = {"every_n_iterations": max(1, iterations // args.evaluations), "episodes": args.eval_episodes,
                    "deterministic": True}
    base["sweep"].update(trials=args.trials, storage=f"sqlite:///{folder / 'pgkit.db'}")
    config = folder / "sweep.yaml"
    config.write_text(yaml.safe_dump(base, sort_keys=False))
    started = time.perf_counter()
    proc = subprocess.run(["pgkit", "sweep", "--config", str(config), "--workers", str(args.jobs)], cwd=folder,
                          capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    wall = time.perf_counter() - started
    if proc.returncode:
        raise RuntimeError(f"pgkit sweep failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    study = optuna.load_study(study_name="cartpole", storage=f"sqlite:///{folder / 'pgkit.db'}")
    return {"wall_s": wall, **_summary(study)}


def _summary(study: optuna.Study) -> dict[str, Any]:
    states = [t.state.name for t in study.trials]
    return {"best_value": study.best_value, "best_params": study.best_params,
            "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"), "failed": states.count("FAIL")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--steps", type=int, default=50_000, help="env steps per trial")
    parser.add_argument("--evaluations", type=int, default=5, help="evaluations per trial")
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2, help="trials at once")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "sweep_vs_rlzoo.json"))
    args = parser.parse_args()

    results: dict[str, Any] = {}
    for tool, run in (("rl_zoo3", run_zoo), ("pgkit", run_pgkit)):
        with tempfile.TemporaryDirectory(prefix=f"sweep-{tool}-") as tmp:
            print(f"{tool}: {args.trials} trials of {args.steps} steps, {args.jobs} at once ...", flush=True)
            results[tool] = run(args, Path(tmp))
            r = results[tool]
            print(f"{tool}: {r['wall_s']:.0f} s, best {r['best_value']:.1f} ({r['complete']} complete, "
                  f"{r['pruned']} pruned, {r['failed']} failed)", flush=True)
    zoo, ours = results["rl_zoo3"], results["pgkit"]
    ratio = ours["wall_s"] / zoo["wall_s"]
    print("\n| tool | wall-clock (s) | best value | complete | pruned |\n|---|---:|---:|---:|---:|")
    for tool, r in results.items():
        print(f"| {tool} | {r['wall_s']:.0f} | {r['best_value']:.1f} | {r['complete']} | {r['pruned']} |")
    print(f"\npgkit / RL Zoo wall-clock: {ratio:.2f} (goal: at most 0.5); best value "
          f"{ours['best_value']:.1f} against {zoo['best_value']:.1f} (goal: at least as good)")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    record = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "commit": commit,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "args": vars(args), "results": results,
              "wall_ratio": ratio}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()

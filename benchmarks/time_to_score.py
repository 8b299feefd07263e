"""Time-to-score: wall-clock seconds until PPO's training return first reaches CleanRL's published 1M-step figure.

Run: ``pip install -e ".[bench]" -c constraints.txt && python benchmarks/time_to_score.py``

Score: the mean return of the last 100 training episodes (stochastic policy, raw rewards, as CleanRL reports it)
first reaching CleanRL's published PPO figure at 1M steps (``ppo_continuous_action.py``, MuJoCo v4, 3 seeds):
HalfCheetah 1443, Hopper 2383, Walker2d 2288. Only points with 100 finished episodes behind them count
(:func:`pgkit.bench.time_to_score`). Time runs from the learner's construction (envs, normalisers, model) in a
fresh process, and each learner stops at the first iteration where it has scored.

Learners, one after the other on an otherwise idle machine, each in a fresh spawned process:

- **pgkit** with one config for all envs (``--config``, default ``configs/ppo.yaml``; only ``env.id`` and the seed
  change), its MLflow logging on (into a temporary store) and evaluation off, stopping through
  ``trainer.stop_at_return``.
- **Stable-Baselines3 PPO with RL Zoo's tuned hyperparameters** for each env: the ``HalfCheetah-v4``, ``Hopper-v4``
  and ``Walker2d-v4`` entries of rl_zoo3 2.9.2's ``hyperparams/ppo.yml`` (the zoo has no v5 entries), with
  ``VecNormalize`` (``normalize: true``, gamma from the entry, as the zoo passes it) and no evaluation callback.
  torch keeps its default thread count, as the zoo's ``train.py`` does unless ``--num-threads`` is given.
  So that a slow learner does not hold the machine for an hour, SB3 is given ``--cap-factor`` (default 3) times
  pgkit's time on the same (env, seed), or ``--max-minutes`` if pgkit did not score: an SB3 run still short of the
  score then is reported as "> cap", which already settles a "pgkit at most a third of SB3's time" comparison.
- **CleanRL is not run.** Its only PyPI release (0.4.8, 2021) predates gymnasium, and its current
  ``ppo_continuous_action.py`` (which is not on PyPI) does not run on gymnasium 1.x unchanged
  (``TransformObservation`` now needs an observation space, and the vector env's autoreset changed). Its published
  figure is the threshold; ``configs/ppo.yaml`` has its hyperparameters.

Results go to ``--results`` (JSON, one entry per learner, env and seed, each with the commit it ran at); an entry
already there is not run again, so the measurement can be extended over several sessions (``--fresh`` starts over).
The script prints a table and draws the last-100 return against wall-clock per env (``--plots``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from isolation import isolated

from pgkit.bench_report import LAST_EPISODES

ROOT = Path(__file__).resolve().parent.parent

#: CleanRL's published last-100 training return of PPO at 1M steps (v4 envs, 3 seeds).
CLEANRL_1M = {"HalfCheetah-v5": 1443.0, "Hopper-v5": 2383.0, "Walker2d-v5": 2288.0}

_ZOO_NETS = {"log_std_init": -2, "ortho_init": False, "activation_fn": "relu", "net_arch": {"pi": [256, 256],
                                                                                          "vf": [256, 256]}}
#: RL Zoo's tuned PPO hyperparameters (rl_zoo3 2.9.2, hyperparams/ppo.yml, the -v4 entries), n_envs 1, normalize.
ZOO_PPO: dict[str, dict[str, Any]] = {
    "HalfCheetah-v5": dict(batch_size=64, n_steps=512, gamma=0.98, learning_rate=2.0633e-05, ent_coef=0.000401762,
                           clip_range=0.1, n_epochs=20, gae_lambda=0.92, max_grad_norm=0.8, vf_coef=0.58096,
                           policy_kwargs=_ZOO_NETS),
    "Hopper-v5": dict(batch_size=32, n_steps=512, gamma=0.999, learning_rate=9.80828e-05, ent_coef=0.00229519,
                      clip_range=0.2, n_epochs=5, gae_lambda=0.99, max_grad_norm=0.7, vf_coef=0.835671,
                      policy_kwargs=_ZOO_NETS),
    "Walker2d-v5": dict(batch_size=32, n_steps=512, gamma=0.99, learning_rate=5.05041e-05, ent_coef=0.000585045,
                        clip_range=0.1, n_epochs=20, gae_lambda=0.95, max_grad_norm=1.0, vf_coef=0.871923),
}


def pgkit_run(config: str, env_id: str, seed: int, threshold: float, max_steps: int | None) -> dict[str, Any]:
    """pgkit ``fit`` on ``config`` until the score (or the config's ``total_timesteps``)."""
    from pgkit.config_loading import load_config
    from pgkit.training import fit

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"env.id={env_id}", f"trainer.seed={seed}", f"trainer.stop_at_return={threshold}",
                     f"trainer.output_dir={tmp}/run", f"logger.tracking_uri=sqlite:///{tmp}/mlflow.db",
                     "eval.every_n_iterations=0", "checkpoint.save_best=false"]
        if max_steps:
            overrides.append(f"trainer.total_timesteps={max_steps}")
        cfg = load_config(ROOT / config, overrides)
        start = time.perf_counter()
        result = fit(cfg)
        total = time.perf_counter() - start
    return dict(returns=result.episode_returns, seconds=result.episode_seconds, steps=result.episode_steps,
                env_steps=result.env_steps, total_seconds=total)


def sb3_zoo_run(env_id: str, seed: int, threshold: float, cap_seconds: float, max_steps: int) -> dict[str, Any]:
    """SB3 PPO with RL Zoo's hyperparameters for ``env_id`` until the score, ``cap_seconds`` or ``max_steps``."""
    import numpy as np
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    hp = dict(ZOO_PPO[env_id])
    if "policy_kwargs" in hp:
        kwargs = dict(hp["policy_kwargs"])
        kwargs["activation_fn"] = {"relu": torch.nn.ReLU}[kwargs["activation_fn"]]
        hp["policy_kwargs"] = kwargs
    start = time.perf_counter()
    returns: list[float] = []
    seconds: list[float] = []
    steps: list[int] = []

    class Record(BaseCallback):
        """Each finished episode's return and time (from Monitor's info); stop at the score or the cap."""

        def _on_step(self) -> bool:
            ended = False
            for info in self.locals["infos"]:
                if "episode" in info:
                    returns.append(float(info["episode"]["r"]))
                    seconds.append(time.perf_counter() - start)
                    steps.append(int(self.num_timesteps))
                    ended = True
            # The window is read only when an episode ended, so SB3's step pays for no more than pgkit's iteration.
            scored = ended and len(returns) >= LAST_EPISODES and np.mean(returns[-LAST_EPISODES:]) >= threshold
            return not scored and time.perf_counter() - start < cap_seconds

    env = VecNormalize(make_vec_env(env_id, n_envs=1, seed=seed), gamma=hp["gamma"])
    model = PPO("MlpPolicy", env, device="cpu", seed=seed, verbose=0, **hp)
    model.learn(total_timesteps=max_steps, callback=Record())
    return dict(returns=returns, seconds=seconds, steps=steps, env_steps=int(model.num_timesteps),
                total_seconds=time.perf_counter() - start, torch_threads=torch.get_num_threads())


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def _fmt(seconds: float | None, run: dict[str, Any] | None = None) -> str:
    """``N s``; ``> N s`` for a run stopped by its time cap short of the score; else "not reached in N steps"."""
    if seconds is not None:
        return f"{seconds:.0f} s"
    if run is not None and run.get("cap_seconds") is not None and run["total_seconds"] >= run["cap_seconds"]:
        return f"> {run['cap_seconds']:.0f} s (capped)"
    return f"not reached in {run['env_steps']} steps" if run is not None else "not reached"


def report(results: list[dict[str, Any]], envs: list[str], plots: Path | None) -> None:
    """Print the table of times to score and the SB3 / pgkit ratios, and draw the curves."""
    print("\n| env | learner | seed | time to score | env steps then | last-100 return at the end (steps) | SPS |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for env in envs:
        for r in sorted((r for r in results if r["env"] == env), key=lambda r: (r["learner"], r["seed"])):
            at = r["steps"][r["seconds"].index(r["time_to_score"])] if r["time_to_score"] is not None else None
            end = sum(r["returns"][-100:]) / max(1, len(r["returns"][-100:]))
            print(f"| {env} | {r['label']} | {r['seed']} | {_fmt(r['time_to_score'], r)} | "
                  f"{at if at is not None else '-'} | {end:.0f} "
                  f"({r['env_steps']}) | {r['env_steps'] / r['total_seconds']:.0f} |")
    print()
    for env in envs:
        runs = {s: {r["learner"]: r for r in results if r["env"] == env and r["seed"] == s}
                for s in sorted({r["seed"] for r in results if r["env"] == env})}
        ratios = []
        for seed, pair in runs.items():
            pg, sb3 = pair.get("pgkit"), pair.get("sb3")
            if pg is None or sb3 is None or pg["time_to_score"] is None:
                continue
            if sb3["time_to_score"] is not None:
                ratios.append(f"seed {seed}: {sb3['time_to_score'] / pg['time_to_score']:.2f}x")
            elif sb3["total_seconds"] >= sb3["cap_seconds"]:
                ratios.append(f"seed {seed}: > {sb3['cap_seconds'] / pg['time_to_score']:.2f}x (SB3 capped)")
        if ratios:
            print(f"{env}: SB3 time / pgkit time: {'; '.join(ratios)}")
    if plots is not None:
        _plot(results, envs, plots)


def _plot(results: list[dict[str, Any]], envs: list[str], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    for env in envs:
        runs = [r for r in results if r["env"] == env]
        if not runs:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        colors = {"pgkit": "tab:blue", "sb3": "tab:orange"}
        for r in sorted(runs, key=lambda r: (r["learner"], r["seed"])):
            ret = np.asarray(r["returns"], dtype=float)
            if ret.size == 0:
                continue
            last100 = [ret[max(0, i + 1 - LAST_EPISODES) : i + 1].mean() for i in range(ret.size)]
            ax.plot(np.asarray(r["seconds"]) / 60, last100, color=colors[r["learner"]], alpha=0.85,
                    linestyle="-" if r["seed"] == min(x["seed"] for x in runs) else "--",
                    label=f"{r['label']}, seed {r['seed']}")
        ax.axhline(CLEANRL_1M[env], color="gray", linewidth=1, linestyle=":", label="CleanRL, 1M steps (published)")
        ax.set_xlabel("wall-clock minutes (2-core CPU)")
        ax.set_ylabel("mean return, last 100 training episodes")
        ax.set_title(f"PPO time to score, {env}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / f"time-to-score-{env}.png", dpi=110)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", default="HalfCheetah-v5,Hopper-v5,Walker2d-v5")
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--config", default="configs/ppo.yaml", help="pgkit's config, the same for every env")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="pgkit's step limit (default: the config's total_timesteps)")
    parser.add_argument("--sb3-max-steps", type=int, default=1_000_000, help="SB3's step limit (the zoo's 1M)")
    parser.add_argument("--cap-factor", type=float, default=3.0, help="SB3's time cap, in units of pgkit's time")
    parser.add_argument("--max-minutes", type=float, default=60.0, help="SB3's time cap when pgkit did not score")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "time_to_score.json")
    parser.add_argument("--plots", type=Path, default=ROOT / "docs" / "img" / "time-to-score")
    parser.add_argument("--learners", default="pgkit,sb3", help="which learners to run (pgkit, sb3)")
    parser.add_argument("--fresh", action="store_true", help="ignore the results file's earlier entries")
    parser.add_argument("--replace", action="store_true",
                        help="run the chosen learners again where the results file has them, replacing those entries "
                             "(e.g. pgkit after a speed-up, keeping SB3's)")
    parser.add_argument("--report-only", action="store_true", help="print the table and plots of the results file")
    args = parser.parse_args()

    envs = args.envs.split(",")
    for env in envs:
        if env not in CLEANRL_1M:
            parser.error(f"--envs: no published CleanRL figure for {env!r}; choose from {', '.join(CLEANRL_1M)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    results: list[dict[str, Any]] = []
    if args.results.exists() and not args.fresh:
        results = json.loads(args.results.read_text())
    if not args.report_only:
        commit = _commit()
        print(f"# time to score, {os.cpu_count()} cores, {platform.processor() or platform.machine()}, commit {commit}")

        def key(learner: str, env: str, seed: int) -> tuple[Any, ...]:
            return learner, env, seed, args.config if learner == "pgkit" else None

        def entry_key(r: dict[str, Any]) -> tuple[Any, ...]:
            return r["learner"], r["env"], r["seed"], r.get("config")

        # With --replace the chosen learners' entries are run again; each old entry stays in the file until its
        # replacement is saved, so an interrupted run loses nothing.
        stale = {entry_key(r) for r in results if args.replace and r["learner"] in args.learners.split(",")}

        def have(learner: str, env: str, seed: int) -> dict[str, Any] | None:
            wanted = key(learner, env, seed)
            return None if wanted in stale else next((r for r in results if entry_key(r) == wanted), None)

        def save(entry: dict[str, Any]) -> None:
            entry["returns"] = [round(x, 2) for x in entry["returns"]]  # the file stays small; times to 1 ms
            entry["seconds"] = [round(x, 3) for x in entry["seconds"]]
            entry["time_to_score"] = time_to_score(entry["returns"], entry["seconds"], entry["threshold"])
            if entry_key(entry) in stale:
                stale.discard(entry_key(entry))
                results[:] = [r for r in results if entry_key(r) != entry_key(entry)]
            results.append(entry)
            args.results.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.results.with_suffix(".tmp")
            tmp.write_text(json.dumps(results))
            os.replace(tmp, args.results)

        from pgkit.bench import time_to_score

        for env in envs:
            threshold = CLEANRL_1M[env]
            for seed in seeds:
                meta = dict(env=env, seed=seed, threshold=threshold, commit=commit,
                            date=datetime.now(UTC).isoformat(timespec="seconds"))
                pg = have("pgkit", env, seed)
                if pg is None and "pgkit" in args.learners.split(","):
                    run = isolated(pgkit_run, args.config, env, seed, threshold, args.max_steps)
                    pg = dict(learner="pgkit", config=args.config, label=f"pgkit ({args.config})", **meta, **run)
                    save(pg)
                    print(f"{env} seed {seed}: pgkit {_fmt(pg['time_to_score'], pg)} ({pg['env_steps']} steps, "
                          f"{pg['total_seconds']:.0f} s)", flush=True)
                if "sb3" in args.learners.split(",") and have("sb3", env, seed) is None:
                    scored = pg is not None and pg["time_to_score"] is not None
                    cap = args.cap_factor * pg["time_to_score"] if scored else 60 * args.max_minutes
                    run = isolated(sb3_zoo_run, env, seed, threshold, cap, args.sb3_max_steps)
                    sb3 = dict(learner="sb3", label="SB3 PPO (RL Zoo hyperparameters)", cap_seconds=cap, **meta,
                               **run)
                    save(sb3)
                    print(f"{env} seed {seed}: SB3 {_fmt(sb3['time_to_score'], sb3)} ({sb3['env_steps']} steps, "
                          f"{sb3['total_seconds']:.0f} s)", flush=True)
    report([r for r in results if r["env"] in envs and r["seed"] in seeds], envs, args.plots)


if __name__ == "__main__":
    main()

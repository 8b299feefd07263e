"""``pgkit bench``: every (algorithm, env, seed) of a suite as its own training run, then tables and curves.

A suite is a YAML file (:class:`SuiteConfig`): which configs to train, on which envs, for how many steps, and the
published figures to compare against. Runs go to worker processes (``spawn``, one torch thread each by default).
Each finished run leaves ``runs/<algorithm>-<env>-s<seed>/result.json`` under the output directory; a suite started
again skips those and reruns the others from the start. The reports (``results.csv``, ``results.md`` and one
learning-curve PNG per env) are written from all the ``result.json`` files at the end, so they also cover runs
finished by earlier invocations.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import multiprocessing
import os
import re
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from pgkit.bench_report import LAST_EPISODES, write_reports
from pgkit.errors import ConfigError, UserError

_MODEL = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class SuiteAlgorithm(BaseModel):
    """One algorithm of a suite: a config file and overrides applied to it for every env and seed."""

    model_config = _MODEL

    config: str
    """Experiment config, relative to the suite file (e.g. ``../ppo.yaml``)."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Dotted keys set on top of ``config`` (as ``pgkit fit --set``), e.g. ``{eval.episodes: 10}``."""


class Reference(BaseModel):
    """Published figures for one algorithm, shown beside pgkit's."""

    model_config = _MODEL

    source: str
    """Who measured it and how, e.g. ``PPO, CleanRL v4, 3 seeds, last-100 mean``."""
    algorithm: str
    """The suite algorithm it compares with."""
    returns: dict[str, float] = Field(default_factory=dict)
    """Final return per env id."""


class SuiteConfig(BaseModel):
    """A benchmark suite file."""

    model_config = _MODEL

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    """Suite name: the MLflow experiment is ``bench-<name>`` and the default output ``bench/<name>``."""
    description: str = ""
    """What the suite measures."""
    total_timesteps: PositiveInt
    """Environment steps per run."""
    seeds: PositiveInt = 3
    """Seeds per (algorithm, env): seeds 1 to this (``--seeds`` overrides it)."""
    eval_episodes: PositiveInt = 10
    """Deterministic evaluation episodes on the final policy of each run."""
    algorithms: dict[str, SuiteAlgorithm] = Field(min_length=1)
    """Algorithm label -> config."""
    envs: list[str] = Field(min_length=1)
    """Environment ids."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Dotted keys set on every run (before each algorithm's own overrides)."""
    reference: list[Reference] = Field(default_factory=list)
    """Published figures for the results table."""


@dataclass(frozen=True)
class RunSpec:
    """One training run of a suite."""

    algorithm: str
    env: str
    seed: int
    config: str
    overrides: tuple[str, ...]
    output_dir: str
    eval_episodes: int
    tracking_uri: str
    experiment: str

    @property
    def name(self) -> str:
        """``<algorithm>-<env>-s<seed>``, safe as a directory name."""
        return run_name(self.algorithm, self.env, self.seed)


def run_name(algorithm: str, env: str, seed: int) -> str:
    """``<algorithm>-<env>-s<seed>``, safe as a directory name."""
    return f"{algorithm}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', env)}-s{seed}"


def load_suite(path: str | Path) -> SuiteConfig:
    """Read and validate a suite file; errors name the field (exit 2 from the CLI)."""
    from pgkit.config_loading import read_yaml_file

    data = read_yaml_file(path)
    try:
        return SuiteConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ConfigError(f"suite error: {path}: {field}: {err['msg']}") from None


def _selected(given: str | None, available: list[str], what: str) -> list[str]:
    if not given:
        return list(available)
    chosen = [item.strip() for item in given.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in available]
    if unknown:
        raise UserError(f"bench error: --{what}: {', '.join(unknown)} not in the suite (it has {', '.join(available)})")
    return chosen


def plan_runs(
    suite: SuiteConfig,
    suite_path: Path,
    output: Path,
    algorithms: str | None = None,
    envs: str | None = None,
    seeds: int | None = None,
    tracking_uri: str | None = None,
) -> list[RunSpec]:
    """Every selected (algorithm, env, seed), each config validated now, so bad input fails before any training."""
    from pgkit.config_loading import load_config

    specs = []
    for algo in _selected(algorithms, list(suite.algorithms), "algorithms"):
        entry = suite.algorithms[algo]
        config = (suite_path.parent / entry.config).resolve()
        for env in _selected(envs, suite.envs, "envs"):
            for seed in range(1, (seeds or suite.seeds) + 1):
                name = run_name(algo, env, seed)
                run_dir = output / "runs" / name
                overrides = [f"{k}={json.dumps(v)}" for k, v in {**suite.overrides, **entry.overrides}.items()]
                tags = {"pgkit.suite": suite.name, "pgkit.label": algo}
                overrides += [
                    f"env.id={json.dumps(env)}",
                    f"trainer.seed={seed}",
                    f"trainer.total_timesteps={suite.total_timesteps}",
                    f"trainer.output_dir={json.dumps(str(run_dir))}",
                    "logger.enabled=true",
                    f"logger.experiment_name=bench-{suite.name}",
                    f"logger.run_name={name}",
                    f"logger.tags={json.dumps(tags)}",
                ]
                if tracking_uri:
                    overrides.append(f"logger.tracking_uri={json.dumps(tracking_uri)}")
                cfg = load_config(config, overrides)  # raises ConfigError naming the field
                specs.append(
                    RunSpec(
                        algo, env, seed, str(config), tuple(overrides), str(run_dir), suite.eval_episodes,
                        cfg.logger.tracking_uri, cfg.logger.experiment_name,
                    )
                )
    return specs


def prepare_tracking(specs: list[RunSpec]) -> None:
    """Create each tracking store and experiment once, here, before the workers start: workers that each create a
    new sqlite store race on its schema migration."""
    from mlflow import MlflowClient

    from pgkit.tracking import tracking_settings

    with tracking_settings():  # MLflow's notes on creating a store stay quiet, as in a run
        for uri, experiment in sorted({(s.tracking_uri, s.experiment) for s in specs}):
            client = MlflowClient(uri)
            if client.get_experiment_by_name(experiment) is None:
                client.create_experiment(experiment)


def result_path(spec: RunSpec) -> Path:
    """Where a finished run records its result."""
    return Path(spec.output_dir) / "result.json"


def last_mean(returns: list[float], n: int = LAST_EPISODES) -> float:
    """Mean of the last ``n`` returns (all of them if fewer); NaN if none."""
    return float(np.mean(returns[-n:])) if returns else float("nan")


def time_to_score(returns: list[float], seconds: list[float], threshold: float,
                  n: int = LAST_EPISODES) -> float | None:
    """Wall-clock seconds (``seconds[i]``: when episode ``i`` finished) at which the mean of the last ``n`` episodes'
    returns first reaches ``threshold``, counting only points with ``n`` episodes behind them; None if never."""
    if len(returns) != len(seconds):
        raise ValueError(f"time_to_score: {len(returns)} returns against {len(seconds)} times")
    if len(returns) < n:
        return None
    window = np.convolve(np.asarray(returns, dtype=float), np.ones(n) / n, mode="valid")  # window[j]: episodes j..j+n-1
    hits = np.flatnonzero(window >= threshold)
    return float(seconds[hits[0] + n - 1]) if hits.size else None


def run_one(spec: RunSpec) -> dict[str, Any]:
    """Train one run, evaluate its final policy deterministically and write ``result.json`` (in a worker)."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # one progress line per run comes from the parent instead
    from pgkit.config_loading import load_config
    from pgkit.evaluation import EVAL_SEED_OFFSET, evaluate, restore_agent
    from pgkit.training import fit

    cfg = load_config(spec.config, list(spec.overrides))
    # An unfinished run (no result.json) restarts from scratch: its folder belongs to the suite, so its stale
    # checkpoints are removed rather than refused.
    shutil.rmtree(Path(cfg.trainer.output_dir) / "checkpoints", ignore_errors=True)
    start = time.perf_counter()
    result = fit(cfg)
    wall = time.perf_counter() - start
    agent, _, _ = restore_agent(result.last_checkpoint)
    env = cfg.env
    evaluation = evaluate(
        agent, env.id, spec.eval_episodes, True, cfg.trainer.seed + EVAL_SEED_OFFSET, env.kwargs, env.max_episode_steps
    )
    record = {
        "algorithm": spec.algorithm,
        "env": spec.env,
        "seed": spec.seed,
        "final_return": last_mean(result.episode_returns),
        "eval_return": evaluation.mean_return,
        "eval_std": evaluation.std_return,
        "env_steps": result.env_steps,
        "wall_s": wall,
        "sps": result.env_steps / wall,
        "episodes": len(result.episode_returns),
        "mlflow_run_id": result.mlflow_run_id,
        "curve_steps": result.episode_steps,
        "curve_returns": result.episode_returns,
    }
    path = result_path(spec)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)  # atomic: a run is finished exactly when its result.json exists
    return record


def finished_records(suite: SuiteConfig, out: Path) -> list[dict[str, Any]]:
    """Every finished run of the suite in ``out``, whichever invocation (and selection) ran it."""
    records = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/result.json"))]
    return [r for r in records if r["algorithm"] in suite.algorithms and r["env"] in suite.envs]


def _run_safely(spec: RunSpec) -> dict[str, Any]:
    try:
        return run_one(spec)
    except Exception as exc:  # reported by the parent; the suite goes on with the other runs
        return {"error": f"{exc.__class__.__name__}: {exc}", "traceback": traceback.format_exc()}


def plan_suite(suite_path: str | Path, output: str | Path | None, algorithms: str | None, envs: str | None,
               seeds: int | None, workers: int | None, tracking_uri: str | None
               ) -> tuple[SuiteConfig, Path, list[RunSpec]]:
    """The suite, its output folder and its runs, the selection and counts checked (exit 2 on bad input)."""
    suite_path = Path(suite_path)
    suite = load_suite(suite_path)
    if seeds is not None and seeds < 1:
        raise UserError(f"bench error: --seeds: must be at least 1 (got {seeds})")
    if workers is not None and workers < 1:
        raise UserError(f"bench error: --workers: must be at least 1 (got {workers})")
    out = Path(output) if output else Path("bench") / suite.name
    return suite, out, plan_runs(suite, suite_path, out, algorithms, envs, seeds, tracking_uri)


@dataclass
class BenchSummary:
    """What a ``pgkit bench`` invocation did."""

    ran: int
    skipped: int
    failed: list[str]
    output: Path
    stopped: int = 0
    """``128 + signum`` when a signal stopped the runs (they are queued again, with ``--storage``), else 0."""


def run_suite(
    suite_path: str | Path,
    output: str | Path | None = None,
    algorithms: str | None = None,
    envs: str | None = None,
    seeds: int | None = None,
    workers: int | None = None,
    tracking_uri: str | None = None,
    log=print,
    report_only: bool = False,
) -> BenchSummary:
    """Run the missing runs of a suite in parallel, then write the reports from all its finished runs in the
    output directory (``report_only``: write the reports and run nothing). Runs shared by machines through a
    storage are :func:`pgkit.bench_shared.run_suite_shared`'s."""
    suite, out, specs = plan_suite(suite_path, output, algorithms, envs, seeds, workers, tracking_uri)
    todo = [] if report_only else [s for s in specs if not result_path(s).exists()]
    skipped = len(specs) - len(todo) if not report_only else len(specs)
    out.mkdir(parents=True, exist_ok=True)
    workers = min(workers or os.cpu_count() or 1, max(1, len(todo)))
    if report_only:
        log(f"bench {suite.name}: writing the reports from the finished runs in {out}")
    else:
        log(f"bench {suite.name}: {len(specs)} runs ({skipped} already finished), {workers} workers, output {out}")
    failed: list[str] = []
    if todo:
        prepare_tracking(todo)
        ctx = multiprocessing.get_context("spawn")
        with futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            jobs = {pool.submit(_run_safely, spec): spec for spec in todo}
            for done, job in enumerate(futures.as_completed(jobs), 1):
                spec, record = jobs[job], job.result()
                prefix = f"[{done}/{len(todo)}] {spec.algorithm} {spec.env} seed {spec.seed}"
                if "error" in record:
                    failed.append(spec.name)
                    log(f"{prefix}: FAILED: {record['error']}\n{record['traceback']}")
                else:
                    log(
                        f"{prefix}: return {record['final_return']:.1f} (eval {record['eval_return']:.1f}), "
                        f"{record['env_steps']} steps in {record['wall_s']:.0f} s ({record['sps']:.0f} SPS)"
                    )
    write_reports(suite, finished_records(suite, out), out)
    log(f"wrote {out / 'results.csv'}, {out / 'results.md'} and learning curves")
    return BenchSummary(ran=len(todo) - len(failed), skipped=skipped, failed=failed, output=out)


__all__ = ["BenchSummary", "SuiteConfig", "load_suite", "plan_runs", "run_suite", "write_reports"]

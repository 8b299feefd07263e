"""``pgkit bench`` reports: ``results.csv``, ``results.md`` (mean ± std over seeds beside the suite's published
figures; with 3 or more seeds also rliable's IQM and bootstrap intervals, :mod:`pgkit.bench_stats`) and the curves
per env (mean ± std, and the IQM sample-efficiency curve), from the records of finished runs."""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pgkit.bench_stats import MIN_SEEDS, iqm_markdown, plot_iqm_curves

if TYPE_CHECKING:
    from pgkit.bench import SuiteConfig

#: Episodes averaged for the final training return (as CleanRL and the published MuJoCo tables).
LAST_EPISODES = 100

CSV_COLUMNS = ["algorithm", "env", "seed", "final_return", "eval_return", "eval_std", "env_steps", "wall_s", "sps"]


@dataclass(frozen=True)
class Cell:
    """Mean and population std over seeds of one quantity for one (algorithm, env)."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.0f} ± {self.std:.0f}"


def aggregate(records: list[dict[str, Any]], key: str) -> dict[tuple[str, str], Cell]:
    """``(algorithm, env) -> Cell`` of ``key`` over seeds."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in records:
        groups.setdefault((r["algorithm"], r["env"]), []).append(float(r[key]))
    return {k: Cell(float(np.mean(v)), float(np.std(v)), len(v)) for k, v in groups.items()}


def curve_on_grid(steps: list[int], returns: list[float], grid: np.ndarray) -> np.ndarray:
    """At each grid point, the mean of the last ``LAST_EPISODES`` returns of episodes finished by then (NaN
    before the first): the same statistic as the final return, followed through training."""
    steps_a, returns_a = np.asarray(steps), np.asarray(returns, dtype=float)
    out = np.full(len(grid), np.nan)
    for i, x in enumerate(grid):
        n = int(np.searchsorted(steps_a, x, side="right"))
        if n:
            out[i] = returns_a[max(0, n - LAST_EPISODES) : n].mean()
    return out


def curve_grid(total: int) -> np.ndarray:
    """The 100 env-step points the curves are read at."""
    return np.linspace(0, total, 101)[1:]


def write_reports(suite: SuiteConfig, records: list[dict[str, Any]], out: Path) -> None:
    """``results.csv``, ``results.md`` and ``curve-<env>.png`` from the finished runs' records."""
    records = sorted(records, key=lambda r: (r["algorithm"], r["env"], r["seed"]))
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    (out / "results.md").write_text(results_markdown(suite, records))
    for env in suite.envs:
        env_records = [r for r in records if r["env"] == env]
        if env_records:
            plot_env_curves(env, env_records, suite.total_timesteps, out / f"curve-{env}.png")
            grid = curve_grid(suite.total_timesteps)
            curves = {a: np.array([curve_on_grid(r["curve_steps"], r["curve_returns"], grid)
                                   for r in env_records if r["algorithm"] == a])
                      for a in sorted({r["algorithm"] for r in env_records})}
            plot_iqm_curves(env, curves, grid, out / f"iqm-{env}.png")


def results_markdown(suite: SuiteConfig, records: list[dict[str, Any]]) -> str:
    """Tables of final return, deterministic evaluation and throughput, with the suite's reference figures."""
    envs = [e for e in suite.envs if any(r["env"] == e for r in records)] or suite.envs
    algos = [a for a in suite.algorithms if any(r["algorithm"] == a for r in records)]
    header = "| | " + " | ".join(envs) + " |\n|---|" + "---|" * len(envs) + "\n"

    def table(key: str, fmt=str) -> str:
        cells = aggregate(records, key)
        rows = []
        for algo in algos:
            values = [cells.get((algo, e)) for e in envs]
            seeds = sorted({c.n for c in values if c is not None})
            label = f"pgkit {algo} ({'/'.join(map(str, seeds))} seed{'s' if seeds and max(seeds) > 1 else ''})"
            rows.append(f"| {label} | " + " | ".join(fmt(c) if c else "—" for c in values) + " |")
        return header + "\n".join(rows) + "\n"

    budget = f"{suite.total_timesteps:,} env steps"
    lines = [f"# Benchmark suite `{suite.name}`: {budget} per run\n"]
    if suite.description:
        lines.append(suite.description.strip() + "\n")
    final = table("final_return")
    refs = [
        f"| {ref.source} | " + " | ".join(f"{ref.returns[e]:.0f}" if e in ref.returns else "—" for e in envs) + " |"
        for ref in suite.reference
        if ref.algorithm in algos or not algos
    ]
    lines.append(f"## Final return: mean of the last {LAST_EPISODES} training episodes, mean ± std over seeds\n")
    lines.append(final + ("\n".join(refs) + "\n" if refs else ""))
    if refs:
        lines.append("Reference rows are published figures at about the same budget, not measured here.\n")
    if any(c.n >= MIN_SEEDS for c in aggregate(records, "final_return").values()):
        lines.append(iqm_markdown(records, algos, envs))
    lines.append("## Deterministic evaluation of the final policy, mean ± std over seeds\n")
    lines.append(table("eval_return"))
    lines.append("## Throughput: environment steps per second of training (one process per run)\n")
    lines.append(table("sps", lambda c: f"{c.mean:.0f}"))
    lines.append("## Wall-clock per run, seconds\n")
    lines.append(table("wall_s", lambda c: f"{c.mean:.0f}"))
    return "\n".join(lines)


def plot_env_curves(env: str, records: list[dict[str, Any]], total: int, path: Path) -> None:
    """Return against env steps for one env: per algorithm, mean over seeds with a ±std band."""
    from pgkit.plotting import return_figure, save_return_figure

    grid = curve_grid(total)
    fig, ax = return_figure(height=4.2)
    for algo in sorted({r["algorithm"] for r in records}):
        runs = [r for r in records if r["algorithm"] == algo]
        curves = np.array([curve_on_grid(r["curve_steps"], r["curve_returns"], grid) for r in runs])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN points before a run's first episode
            mean, std = np.nanmean(curves, axis=0), np.nanstd(curves, axis=0)
        (line,) = ax.plot(grid, mean, label=f"{algo} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
        ax.fill_between(grid, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_title(f"{env}: mean of the last {LAST_EPISODES} training episodes, ±std over seeds")
    save_return_figure(fig, ax, path)


__all__ = ["CSV_COLUMNS", "LAST_EPISODES", "aggregate", "curve_on_grid", "results_markdown", "write_reports"]

"""Research-grade statistics for ``pgkit bench`` with 3 or more seeds, through rliable (Agarwal et al. 2021):
the interquartile mean (IQM) of the final return with a 95% stratified-bootstrap confidence interval, and the IQM
learning curve with its interval band (the sample-efficiency curve).

rliable comes with the ``bench`` extra; without it the report says so instead of guessing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The fewest seeds an IQM with a bootstrap interval is reported for (fewer: mean ± std only).
MIN_SEEDS = 3
#: Bootstrap replications (rliable's default is 50000; 2000 keeps a report to seconds with stable 95% bounds).
REPS = 2000
#: Points of the sample-efficiency curve.
CURVE_POINTS = 25


@dataclass(frozen=True)
class Interval:
    """An IQM with its 95% stratified-bootstrap confidence interval, over ``n`` seeds."""

    iqm: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.iqm:.0f} [{self.low:.0f}, {self.high:.0f}]"


def available() -> bool:
    """Whether rliable is installed."""
    try:
        import rliable  # noqa: F401
    except ImportError:
        return False
    return True


def _iqm_over_runs(scores: np.ndarray) -> np.ndarray:
    """IQM over the runs (axis 0) of ``[runs, tasks, points]``, one value per point: 25% trimmed from each end."""
    from scipy.stats import trim_mean

    return trim_mean(scores.reshape(scores.shape[0] * scores.shape[1], -1), 0.25, axis=0)


def iqm_interval(values: list[float], seed: int = 0) -> Interval:
    """IQM of one (algorithm, env)'s final returns over seeds, with rliable's stratified-bootstrap 95% interval."""
    from rliable import library

    scores = np.asarray(values, dtype=float).reshape(-1, 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arch's notice about rliable's random_state argument
        point, bounds = library.get_interval_estimates(
            {"x": scores}, _iqm_over_runs, reps=REPS, random_state=np.random.RandomState(seed)
        )
    return Interval(float(point["x"][0]), float(bounds["x"][0, 0]), float(bounds["x"][1, 0]), len(values))


def iqm_curve(curves: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQM over seeds at each point of ``curves [seeds, points]``, with the 95% interval's low and high."""
    from rliable import library

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN points before a run's first episode
        warnings.simplefilter("ignore", FutureWarning)  # arch's notice about rliable's random_state argument
        point, bounds = library.get_interval_estimates(
            {"x": curves[:, None, :]}, _iqm_over_runs, reps=REPS, random_state=np.random.RandomState(seed)
        )
    return point["x"], bounds["x"][0], bounds["x"][1]


def iqm_markdown(records: list[dict[str, Any]], algos: list[str], envs: list[str]) -> str:
    """The IQM section of ``results.md``: one cell per (algorithm, env) with at least :data:`MIN_SEEDS` seeds."""
    heading = (f"## Final return: interquartile mean over seeds, [95% stratified-bootstrap interval] (rliable, "
               f"{REPS} replications; cells with at least {MIN_SEEDS} seeds)\n")
    if not available():
        install = '`pip install -e ".[bench]" -c constraints.txt`'
        return heading + f"\nNot computed: rliable is not installed ({install}).\n"
    header = "| | " + " | ".join(envs) + " |\n|---|" + "---|" * len(envs) + "\n"
    rows = []
    for algo in algos:
        cells = []
        for env in envs:
            values = [float(r["final_return"]) for r in records if r["algorithm"] == algo and r["env"] == env]
            if not values:
                cells.append("—")
            elif len(values) < MIN_SEEDS:
                cells.append(f"— ({len(values)} seed{'s' if len(values) > 1 else ''})")
            else:
                cells.append(str(iqm_interval(values)))
        rows.append(f"| pgkit {algo} | " + " | ".join(cells) + " |")
    return heading + "\n" + header + "\n".join(rows) + "\n"


def plot_iqm_curves(env: str, curves_by_algo: dict[str, np.ndarray], grid: np.ndarray, path: Path) -> bool:
    """The sample-efficiency curve of one env: IQM over seeds against env steps, with its 95% band, for each
    algorithm with at least :data:`MIN_SEEDS` seeds. False (nothing written) when none has, or without rliable."""
    wanted = {a: c for a, c in curves_by_algo.items() if c.shape[0] >= MIN_SEEDS}
    if not wanted or not available():
        return False
    from pgkit.plotting import return_figure, save_return_figure

    points = np.unique(np.linspace(0, len(grid) - 1, CURVE_POINTS).round().astype(int))
    fig, ax = return_figure(height=4.2)
    for algo, curves in sorted(wanted.items()):
        iqm, low, high = iqm_curve(curves[:, points])
        (line,) = ax.plot(grid[points], iqm, label=f"{algo} ({curves.shape[0]} seeds)")
        ax.fill_between(grid[points], low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_title(f"{env}: IQM over seeds of the last-100 training return, 95% bootstrap band")
    save_return_figure(fig, ax, path)
    return True


__all__ = ["MIN_SEEDS", "Interval", "available", "iqm_curve", "iqm_interval", "iqm_markdown", "plot_iqm_curves"]

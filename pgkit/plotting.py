"""Return-against-env-steps figures, shared by the per-run MLflow artifact and the benchmark curves."""

from __future__ import annotations

from pathlib import Path


def return_figure(height: float = 4.0):
    """A ``(figure, axes)`` pair on the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, height))


def save_return_figure(fig, ax, path: Path) -> None:
    """Label the axes as episode return against environment steps, save to ``path`` and close the figure."""
    import matplotlib.pyplot as plt

    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

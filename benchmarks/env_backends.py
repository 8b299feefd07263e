"""``env.backend`` on this machine: raw vector-env steps per second, then PPO's fast preset, per backend.

Run: ``python benchmarks/env_backends.py`` (about 4 minutes on 2 cores).

1. Random actions through ``make_vec_env`` (what training steps), HalfCheetah-v5, 8, 16 and 32 sub-envs, backends
   ``sync``, ``async`` (gymnasium's AsyncVectorEnv, one process per sub-env) and ``split`` (two halves at once, one
   in a worker process); 2000 vector steps (``throughput.raw_env_sps``), median of 3.
2. ``pgkit fit --config configs/ppo-fast.yaml`` with ``env.backend`` sync and split, 163840 steps, no evaluation
   or tracking, each in a fresh process, alternating ``--repeats`` times; SPS is the run's own figure (env steps
   over training time). Both backends give the same training numbers (same seeds, same sub-env order).
"""

from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from throughput import raw_env_sps

ROOT = Path(__file__).resolve().parent.parent


def fit_sps(backend: str, steps: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(
            [sys.executable, "-m", "pgkit", "fit", "--config", str(ROOT / "configs" / "ppo-fast.yaml"),
             "--set", f"trainer.total_timesteps={steps}", "--set", f"env.backend={backend}",
             "--set", "logger.enabled=false", "--set", "eval.every_n_iterations=0",
             "--set", f"trainer.output_dir={out}/run"],
            capture_output=True, text=True, check=True,
        )
    return float(re.findall(r"sps=(\d+)", proc.stderr.replace("\r", "\n"))[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=163840)
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, HalfCheetah-v5")
    print("| sub-envs | sync SPS | async SPS | split SPS | split / sync |")
    print("|---:|---:|---:|---:|---:|")
    for n in (8, 16, 32):
        sps = {b: float(np.median([raw_env_sps("HalfCheetah-v5", n, b, 2000 * n) for _ in range(3)]))
               for b in ("sync", "async", "split")}
        print(f"| {n} | {sps['sync']:.0f} | {sps['async']:.0f} | {sps['split']:.0f} | "
              f"{sps['split'] / sps['sync']:.2f}x |", flush=True)
    runs: dict[str, list[float]] = {"sync": [], "split": []}
    for _ in range(args.repeats):
        for backend in runs:
            runs[backend].append(fit_sps(backend, args.steps))
    sync, split = (float(np.median(runs[b])) for b in ("sync", "split"))
    print(f"\nppo-fast, {args.steps} steps: sync {sync:.0f} SPS {runs['sync']}, split {split:.0f} SPS {runs['split']}, "
          f"split / sync {split / sync:.2f}x")


if __name__ == "__main__":
    main()

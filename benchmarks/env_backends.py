"""``env.backend`` on this machine: raw vector-env steps per second, then PPO's fast preset, per backend.

Run: ``python benchmarks/env_backends.py`` (about 5 minutes on 2 cores). The envpool columns of the figures in
docs/benchmarks.md came from this script with envpool's wrapper, which left the tree with the rejected design
(``git show 6c5011b:benchmarks/envpool_vector.py``).

1. Random actions through ``make_vec_env`` (what training steps), HalfCheetah-v5, 8, 16 and 32 sub-envs, backends
   ``sync``, ``async`` (gymnasium's AsyncVectorEnv, one process per sub-env) and ``split`` (two halves at once, one
   in a worker process); 2000 vector steps
   (``throughput.raw_env_sps``), median of 3. Then the cost of the round trip: 2 sub-envs of CartPole (a step of
   a few microseconds) and of HalfCheetah, sync against split.
2. ``pgkit fit --config configs/ppo-fast.yaml`` with ``env.backend`` sync and split, 163840 steps, no evaluation or
   tracking, each in a fresh process, alternating ``--repeats`` times; SPS is the run's own figure (env steps over
   training time). sync and split give the same training numbers (same seeds, same sub-env order).
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
    """The training SPS ``pgkit fit`` reports for the fast preset with ``backend`` (an ``env.backend``)."""
    command = [sys.executable, "-m", "pgkit"]
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(
            [*command, "fit", "--config", str(ROOT / "configs" / "ppo-fast.yaml"),
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
    backends = ["sync", "async", "split"]
    print(f"# {platform.processor() or platform.machine()}, HalfCheetah-v5")
    print(f"| sub-envs | {' | '.join(f'{b} SPS' for b in backends)} | split / sync |")
    print("|---:|" + "---:|" * (len(backends) + 1))
    for n in (8, 16, 32):
        sps = {b: float(np.median([raw_env_sps("HalfCheetah-v5", n, b, 2000 * n) for _ in range(3)]))
               for b in backends}
        row = [f"{sps[b]:.0f}" for b in backends] + [f"{sps['split'] / sps['sync']:.2f}x"]
        print(f"| {n} | {' | '.join(row)} |", flush=True)
    print("\nThe round trip to the worker: microseconds per vector step of 2 sub-envs, median of 3")
    for env_id in ("CartPole-v1", "HalfCheetah-v5"):
        us = {b: 2e6 / float(np.median([raw_env_sps(env_id, 2, b, 8000) for _ in range(3)])) for b in ("sync", "split")}
        print(f"- {env_id}: sync {us['sync']:.0f} us, split {us['split']:.0f} us", flush=True)
    runs: dict[str, list[float]] = {b: [] for b in backends if b != "async"}
    for _ in range(args.repeats):
        for backend in runs:
            runs[backend].append(fit_sps(backend, args.steps))
    print(f"\nppo-fast, {args.steps} steps, median of {args.repeats} (runs):")
    split = float(np.median(runs["split"]))
    for backend, values in runs.items():
        print(f"- {backend}: {np.median(values):.0f} SPS {values}, {np.median(values) / split:.2f}x split")


if __name__ == "__main__":
    main()

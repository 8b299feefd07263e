"""What MLflow's system metrics cost: pgkit PPO with ``logger.system_metrics`` on and off, alternating, in fresh
processes, same config, same seed, MLflow logging to a local sqlite store in both.

Run: ``python benchmarks/system_metrics.py [--config configs/ppo-cartpole.yaml] [--steps 50000] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from isolation import isolated

ROOT = Path(__file__).resolve().parent.parent


def sps(config: str, steps: int, system_metrics: bool, interval: float) -> float:
    """Steps per second of one ``fit``, timed around the call."""
    from pgkit.config_loading import load_config
    from pgkit.training import fit

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(ROOT / config, [
            f"trainer.total_timesteps={steps}", f"trainer.output_dir={tmp}/run", "trainer.torch_threads=1",
            f"logger.tracking_uri=sqlite:///{tmp}/m.db", f"logger.system_metrics={str(system_metrics).lower()}",
            f"logger.system_metrics_interval={interval}", "eval.every_n_iterations=0",
        ])
        start = time.perf_counter()
        result = fit(cfg)
        return result.env_steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/ppo-cartpole.yaml")
    parser.add_argument("--steps", type=int, default=50000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    args = parser.parse_args()
    on, off = [], []
    for _ in range(args.repeats):
        off.append(isolated(sps, args.config, args.steps, False, args.interval))
        on.append(isolated(sps, args.config, args.steps, True, args.interval))
    print(f"# {args.config}, {args.steps} steps, system metrics every {args.interval} s, {args.repeats} alternating")
    print(f"system metrics off: median {statistics.median(off):.0f} SPS of [{', '.join(f'{v:.0f}' for v in off)}]")
    print(f"system metrics on:  median {statistics.median(on):.0f} SPS of [{', '.join(f'{v:.0f}' for v in on)}]")
    print(f"on / off: {statistics.median(on) / statistics.median(off):.3f}")


if __name__ == "__main__":
    main()

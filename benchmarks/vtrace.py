"""V-trace: pgkit's scan against TorchRL's ``vtrace_advantage_estimate`` (a Python loop over time), same inputs.

Run: ``pip install -e ".[test]" -c constraints.txt && python benchmarks/vtrace.py``

Shapes are the trainers' ``[steps, envs]``: PPO's default (2048 x 1), a vectorised rollout (256 x 16), wide batches
(1000 x 256, 128 x 2048), with about 2% episode ends, float32, one torch thread. Each figure is the median of
``--repeats`` timed calls after warm-up; the ratio is TorchRL's time over pgkit's, measured in the same run.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time

import torch
from torchrl.objectives.value.functional import vtrace_advantage_estimate

from pgkit.ops import vtrace

SHAPES = [(2048, 1), (256, 16), (1000, 256), (128, 2048)]


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls, after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# V-trace, float32, one torch thread, {os.cpu_count()} cores, {platform.processor() or platform.machine()}")
    print(f"{'steps x envs':>14} {'pgkit ms':>9} {'TorchRL ms':>11} {'TorchRL / pgkit':>16}")
    g = torch.Generator().manual_seed(0)
    for steps, envs in SHAPES:
        log_pi, log_mu, value, next_value, reward = (torch.randn(steps, envs, generator=g) for _ in range(5))
        terminated = torch.rand(steps, envs, generator=g) < 0.01
        truncated = (torch.rand(steps, envs, generator=g) < 0.01) & ~terminated
        done = terminated | truncated
        tr = [x.T.unsqueeze(-1).contiguous() for x in (log_pi, log_mu, value, next_value, reward, done, terminated)]

        def ours(lp=log_pi, lm=log_mu, r=reward, v=value, nv=next_value, te=terminated, tu=truncated) -> None:
            vtrace(lp - lm, r, v, nv, te, tu, 0.99)  # the log-ratio inside, as TorchRL computes it inside


        theirs = functools.partial(vtrace_advantage_estimate, 0.99, *tr[:6], tr[6])
        pg, ref = timed(ours, args.repeats), timed(theirs, max(3, args.repeats // 4))
        print(f"{steps:>7} x {envs:<5} {pg * 1e3:9.2f} {ref * 1e3:11.2f} {ref / pg:15.1f}x")


if __name__ == "__main__":
    main()

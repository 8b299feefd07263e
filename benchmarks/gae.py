"""pgkit's GAE, as the trainers call it, against TorchRL's CPU paths, on the rollout shapes that matter.

Run: ``python benchmarks/gae.py`` (TorchRL is a test dependency: ``pip install -e ".[test]" -c constraints.txt``).

Shapes (steps x envs): 2048 x 1 (CleanRL's MuJoCo PPO), 256 x 16, 1000 x 256 and 128 x 2048 (many envs), each
with about 1% terminations and 1% truncations and without any episode end, in float32 and float64. pgkit gets its
time-major ``[T, N]`` rollout (``pgkit.ops.gae``); TorchRL gets its own layout ``[N, T, 1]``, prepared outside the
timing, through ``generalized_advantage_estimate`` (a loop over time) and ``vec_generalized_advantage_estimate``
(vectorised: a truncated conv1d for scalar gamma and lambda), and the faster of the two is "TorchRL best". Median of
``--repeats`` interleaved calls after warm-up, one torch thread unless ``--threads``. Ratios above 1: pgkit faster.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
from torchrl.objectives.value.functional import generalized_advantage_estimate, vec_generalized_advantage_estimate

from pgkit.ops import gae

SHAPES = [(2048, 1), (256, 16), (1000, 256), (128, 2048)]
GAMMA, LAMBDA = 0.99, 0.95


def inputs(steps: int, envs: int, dtype: torch.dtype, ends: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    data = {k: torch.randn(steps, envs, generator=g, dtype=dtype) for k in ("reward", "value", "next_value")}
    rate = 0.01 if ends else 0.0
    data["terminated"] = torch.rand(steps, envs, generator=g) < rate
    data["truncated"] = (torch.rand(steps, envs, generator=g) < rate) & ~data["terminated"]
    return data


def median_ms(calls: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median wall time per call of each function, the calls interleaved so all see the same machine state."""
    for call in calls:
        for _ in range(3):
            call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for call, sink in zip(calls, times, strict=True):
            start = time.perf_counter()
            call()
            sink.append(time.perf_counter() - start)
    return [float(np.median(t)) * 1e3 for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} torch "
          f"thread(s), gamma {GAMMA}, lambda {LAMBDA}, median of {args.repeats} interleaved calls")
    print("| steps x envs | ends | dtype | pgkit ms | TorchRL loop ms | TorchRL vectorised ms | TorchRL best / pgkit "
          "| max abs diff |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    worst = float("inf")
    for steps, envs in SHAPES:
        for ends in (True, False):
            for dtype in (torch.float32, torch.float64):
                d = inputs(steps, envs, dtype, ends)
                theirs = {k: v.T.unsqueeze(-1).contiguous() for k, v in d.items()}  # [N, T, 1]
                done = theirs["terminated"] | theirs["truncated"]

                def ours(d=d):
                    return gae(d["reward"], d["value"], d["next_value"], d["terminated"], d["truncated"], GAMMA,
                               LAMBDA)

                def loop(t=theirs, done=done):
                    return generalized_advantage_estimate(GAMMA, LAMBDA, t["value"], t["next_value"], t["reward"],
                                                          done, t["terminated"])

                def vectorised(t=theirs, done=done):
                    return vec_generalized_advantage_estimate(GAMMA, LAMBDA, t["value"], t["next_value"],
                                                              t["reward"], done, t["terminated"])

                reference = loop()[0].squeeze(-1).T
                diff = float((ours()[0] - reference).abs().max())
                t_ours, t_loop, t_vec = median_ms([ours, loop, vectorised], args.repeats)
                ratio = min(t_loop, t_vec) / t_ours
                worst = min(worst, ratio)
                print(f"| {steps} x {envs} | {'1% + 1%' if ends else 'none'} | {str(dtype)[6:]} | {t_ours:.3f} | "
                      f"{t_loop:.3f} | {t_vec:.3f} | {ratio:.1f}x | {diff:.1e} |")
    print(f"slowest ratio over all cases: {worst:.1f}x")


if __name__ == "__main__":
    main()

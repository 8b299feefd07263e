"""pgkit.ops against stateset-rl-core, same inputs, same process, interleaved calls.

Run: ``pip install stateset-rl-core==0.1.1 && python benchmarks/ops_vs_stateset.py``

Prints, per function, the median time per call of each library over ``--repeats`` interleaved calls and the ratio
stateset / pgkit (above 1: pgkit is faster), twice: on an idle machine, then with a competing process keeping one
core busy (a Python busy loop), the situation where torch's intra-op threads wait for the busy core.

Inputs: batch GAE on 256 trajectories of 1000 steps, group advantages
on 4096 groups of 8, and the element-wise functions on the 32768 rewards of those groups, all float64 numpy arrays,
which is all stateset-rl-core accepts.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import stateset_rl_core as stateset
import torch

import pgkit.ops as ops


def cases(rng: np.random.Generator) -> list[tuple[str, Callable[[], object], Callable[[], object]]]:
    """``(name, pgkit call, stateset call)`` on shared inputs."""
    rewards = [rng.standard_normal(1000) for _ in range(256)]
    values = [rng.standard_normal(1001) for _ in range(256)]
    groups = rng.standard_normal((4096, 8))
    flat = groups.reshape(-1)
    other = rng.standard_normal(flat.shape)
    ratios = np.exp(0.1 * rng.standard_normal(flat.shape))
    lengths = rng.integers(1, 512, flat.shape)
    out = [
        ("batch_compute_gae 256x1000", lambda: ops.batch_compute_gae(rewards, values),
         lambda: stateset.batch_compute_gae(rewards, values)),
        ("compute_gae 1000", lambda: ops.compute_gae(rewards[0], values[0]),
         lambda: stateset.compute_gae(rewards[0], values[0])),
    ]
    for baseline in ("mean", "median", "min"):
        out.append((f"compute_group_advantages {baseline} 4096x8",
                    lambda b=baseline: ops.compute_group_advantages(groups, b, True),
                    lambda b=baseline: stateset.compute_group_advantages(groups, b, True)))
    out += [
        ("normalize_rewards 32768", lambda: ops.normalize_rewards(flat, 0.5, 2.0, 100),
         lambda: stateset.normalize_rewards(flat, 0.5, 2.0, 100)),
        ("clip_rewards 32768", lambda: ops.clip_rewards(flat, -1.0, 1.0),
         lambda: stateset.clip_rewards_py(flat, -1.0, 1.0)),
        ("compute_reward_statistics 32768", lambda: ops.compute_reward_statistics(flat),
         lambda: stateset.compute_reward_statistics(flat)),
        ("compute_gspo_importance_ratios 32768", lambda: ops.compute_gspo_importance_ratios(flat, other, lengths),
         lambda: stateset.compute_gspo_importance_ratios(flat, other, lengths)),
        ("apply_gspo_clipping 32768", lambda: ops.apply_gspo_clipping(ratios, other),
         lambda: stateset.apply_gspo_clipping(ratios, other)),
        ("compute_ppo_surrogate 32768", lambda: ops.compute_ppo_surrogate(ratios, other),
         lambda: stateset.compute_ppo_surrogate(ratios, other)),
    ]
    return out


def median_ms(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall time per call of ``a`` and ``b``, calls alternating so both see the same machine state."""
    for _ in range(5):
        a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return float(np.median(ta)) * 1e3, float(np.median(tb)) * 1e3


def table(repeats: int) -> list[float]:
    """Print one table; return its ratios."""
    print("| function | pgkit (ms) | stateset-rl-core (ms) | ratio stateset/pgkit |")
    print("|---|---:|---:|---:|")
    ratios = []
    for name, ours, theirs in cases(np.random.default_rng(0)):
        t_ours, t_theirs = median_ms(ours, theirs, repeats)
        ratios.append(t_theirs / t_ours)
        print(f"| {name} | {t_ours:.4f} | {t_theirs:.4f} | {t_theirs / t_ours:.2f} |", flush=True)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--no-load", action="store_true", help="skip the measurement beside a busy process")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads, median of {args.repeats} interleaved calls")
    print("\n## idle")
    idle = table(args.repeats)
    if args.no_load:
        return
    print("\n## one core busy in another process")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        loaded = table(args.repeats)
    finally:
        busy.kill()
    print(f"\nslowest ratio: idle {min(idle):.2f}, loaded {min(loaded):.2f}")


if __name__ == "__main__":
    main()

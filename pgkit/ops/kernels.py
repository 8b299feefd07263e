"""Compiled CPU loops (numba) for the recursions of GAE, stateset-style trajectories and V-trace.

Why by hand: on a CPU a reverse recursion over time is fastest as one pass over memory, but no maintained library
ships one. TorchRL's CPU GAE either steps through time in Python (a few tensor ops per step, slow on long axes) or,
vectorised, runs the scalar-discount recursion as a conv1d with a truncated geometric filter and splits the axis at
episode ends (slow with many of them); pgkit's blocked scan (:mod:`pgkit.ops.scan`) does ``BLOCK`` times the
arithmetic in matrix products, which loses to a loop on wide batches. A numba loop is a single pass, on one thread,
for every shape: so it is also unaffected by torch's intra-op threads waiting for a core another process holds.

The loop order follows the memory: time outer and rows inner when rows are adjacent in memory (time-major
``[T, N]`` rollouts seen as ``[N, T]``), rows outer otherwise. Every function here writes into ``out`` and follows
the recursion's IEEE arithmetic exactly (an infinite or NaN input spreads as the step-by-step loop spreads it).

numba compiles each dtype's version on first use and caches it on disk next to this file (or in the user's cache
directory when that is not writable), so only the first run pays the compile.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def gae_rows(reward, value, next_value, terminated, done, gamma, gae_lambda, out):  # pragma: no cover - compiled
    """``out[r, t] = delta + gamma * lambda * (1 - done[r, t]) * out[r, t + 1]``, with
    ``delta = reward + gamma * next_value * (1 - terminated) - value`` and ``out`` past the end 0; all ``[rows, T]``
    (any strides)."""
    rows, steps = reward.shape
    discount = gamma * gae_lambda
    if rows > 1 and reward.strides[0] < reward.strides[1]:  # rows adjacent in memory: time outer
        for t in range(steps - 1, -1, -1):
            for r in range(rows):
                following = out[r, t + 1] if t + 1 < steps else 0.0
                keep = 0.0 if terminated[r, t] else 1.0
                delta = reward[r, t] + gamma * (next_value[r, t] * keep) - value[r, t]
                out[r, t] = delta + (discount * (0.0 if done[r, t] else 1.0)) * following
    else:
        for r in range(rows):
            carry = 0.0
            for t in range(steps - 1, -1, -1):
                keep = 0.0 if terminated[r, t] else 1.0
                delta = reward[r, t] + gamma * (next_value[r, t] * keep) - value[r, t]
                carry = delta + (discount * (0.0 if done[r, t] else 1.0)) * carry
                out[r, t] = carry


@njit(cache=True, nogil=True)
def gae_trajectory(rewards, values, gamma, gae_lambda, out):  # pragma: no cover - compiled
    """stateset-rl-core's GAE of one trajectory: ``n`` rewards and ``n + 1`` values (or ``n``, with a bootstrap of
    0); ``A[t] = r[t] + gamma * V[t + 1] - V[t] + gamma * lambda * A[t + 1]``, ``A`` past the end 0."""
    n = rewards.shape[0]
    bootstrap = values.shape[0] > n
    discount = gamma * gae_lambda
    acc = 0.0
    for t in range(n - 1, -1, -1):
        following = values[t + 1] if (t + 1 < n or bootstrap) else 0.0
        acc = rewards[t] + gamma * following - values[t] + discount * acc
        out[t] = acc


@njit(cache=True, nogil=True)
def gae_trajectories(rewards, values, starts, value_starts, gamma, gae_lambda, out):  # pragma: no cover - compiled
    """:func:`gae_trajectory` for trajectories packed end to end: trajectory ``i`` is ``rewards[starts[i]:
    starts[i + 1]]`` with values ``values[value_starts[i]:value_starts[i + 1]]``; ``out`` is laid out as ``rewards``."""
    for i in range(starts.shape[0] - 1):
        a, b = starts[i], starts[i + 1]
        gae_trajectory(rewards[a:b], values[value_starts[i] : value_starts[i + 1]], gamma, gae_lambda, out[a:b])


@njit(cache=True, nogil=True)
def reverse_scan_rows(x, discount, out):  # pragma: no cover - compiled
    """``out[r, t] = x[r, t] + discount[r, t] * out[r, t + 1]``, ``out`` past the end 0; all ``[rows, T]``."""
    rows, steps = x.shape
    if rows > 1 and x.strides[0] < x.strides[1]:
        for t in range(steps - 1, -1, -1):
            for r in range(rows):
                following = out[r, t + 1] if t + 1 < steps else 0.0
                out[r, t] = x[r, t] + discount[r, t] * following
    else:
        for r in range(rows):
            acc = 0.0
            for t in range(steps - 1, -1, -1):
                acc = x[r, t] + discount[r, t] * acc
                out[r, t] = acc


def empty_like_layout(x: np.ndarray) -> np.ndarray:
    """An uninitialised array shaped like the 2-D ``x`` with its memory order (so loops over both agree)."""
    return np.empty(x.shape, dtype=x.dtype, order="F" if x.strides[0] < x.strides[1] else "C")

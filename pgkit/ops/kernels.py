"""Compiled CPU loops (numba) for the recursions of GAE, stateset-style trajectories and V-trace.

Why by hand: on a CPU a reverse recursion over time is fastest as one pass over memory, but no maintained library
ships one. TorchRL's CPU GAE either steps through time in Python (a few tensor ops per step, slow on long axes) or,
vectorised, runs the scalar-discount recursion as a conv1d with a truncated geometric filter and splits the axis at
episode ends (slow with many of them); pgkit's blocked scan (:mod:`pgkit.ops.scan`) does ``BLOCK`` times the
arithmetic in matrix products, which loses to a loop on wide batches. A numba loop is a single pass, on one thread,
for every shape: so it is also unaffected by torch's intra-op threads waiting for a core another process holds.

The loop order follows the memory: time outer and rows inner when rows are adjacent in memory (time-major
``[T, N]`` rollouts seen as ``[N, T]``), rows outer otherwise; both give the same numbers. Every function here
writes into ``out`` and follows the step-by-step recursion in IEEE arithmetic (an infinite or NaN input spreads as
the loop spreads it): each step is computed in float64 and rounded to the array's dtype when stored, and the next
step reads the stored value. In float64 that is the recursion exactly; in float32 it differs from torch's float32
ops by rounding only.

numba compiles each dtype's version on first use and caches it on disk next to this file (or in the user's cache
directory when that is not writable), so only the first run pays the compile.
"""

from __future__ import annotations

import math

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
            following = 0.0
            for t in range(steps - 1, -1, -1):
                keep = 0.0 if terminated[r, t] else 1.0
                delta = reward[r, t] + gamma * (next_value[r, t] * keep) - value[r, t]
                out[r, t] = delta + (discount * (0.0 if done[r, t] else 1.0)) * following
                following = out[r, t]  # as stored: both loop orders round alike


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
        out[t] = rewards[t] + gamma * following - values[t] + discount * acc
        acc = out[t]  # as stored, in the array's dtype


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
                out[r, t] = x[r, t] + discount[r, t] * acc
                acc = out[r, t]  # as stored: both loop orders round alike


@njit(cache=True, nogil=True)
def clip_flat(x, low, high, out):  # pragma: no cover - compiled
    """``out = clamp(x, low, high)``, NaN kept."""
    for i in range(x.shape[0]):
        v = x[i]
        out[i] = low if v < low else (high if v > high else v)


@njit(cache=True, nogil=True)
def surrogate_flat(ratio, advantage, low, high, out):  # pragma: no cover - compiled
    """``A * min(r, high)`` where ``A >= 0``, else ``A * max(r, low)`` (NaN in either gives NaN)."""
    for i in range(ratio.shape[0]):
        r, a = ratio[i], advantage[i]
        if a >= 0:
            out[i] = a * (high if r > high else r)
        else:
            out[i] = a * (low if r < low else r)


@njit(cache=True, nogil=True)
def sequence_ratio_flat(new, old, length, out):  # pragma: no cover - compiled
    """GSPO's ``exp((new - old) / max(length, 1))`` where ``length > 0``, else 1."""
    for i in range(new.shape[0]):
        n = length[i]
        if n > 0:
            out[i] = np.exp((new[i] - old[i]) / (n if n > 1 else 1.0))
        else:
            out[i] = 1.0


@njit(cache=True, nogil=True)
def group_advantages_rows(x, kind, normalize, out):  # pragma: no cover - compiled
    """stateset-rl-core's group advantages of ``x [groups, size]`` into ``out`` of the same shape: ``x`` minus the
    row's baseline (``kind`` 0 mean, 1 median, 2 min; NaN if the row holds a NaN), then, with ``normalize``, centred
    and divided by ``std + 1e-8`` (population std) where that std exceeds 1e-8."""
    groups, size = x.shape
    ordered = np.empty(size, x.dtype)
    for g in range(groups):
        has_nan = False
        for j in range(size):
            if x[g, j] != x[g, j]:
                has_nan = True
        if kind == 0:
            total = 0.0
            for j in range(size):
                total += x[g, j]
            base = total / size
        elif has_nan:
            base = np.nan
        elif kind == 1 and size > 32:
            for j in range(size):
                ordered[j] = x[g, j]
            ordered.sort()
            base = (ordered[(size - 1) // 2] + ordered[size // 2]) / 2
        elif kind == 1:
            for j in range(size):  # insertion sort: small groups, where np.sort's setup costs more
                v = x[g, j]
                k = j
                while k > 0 and ordered[k - 1] > v:
                    ordered[k] = ordered[k - 1]
                    k -= 1
                ordered[k] = v
            base = (ordered[(size - 1) // 2] + ordered[size // 2]) / 2
        else:
            base = x[g, 0]
            for j in range(1, size):
                if x[g, j] < base:
                    base = x[g, j]
        for j in range(size):
            out[g, j] = x[g, j] - base
        if normalize:
            total = 0.0
            for j in range(size):
                total += out[g, j]
            mean = total / size
            squares = 0.0
            for j in range(size):
                squares += (out[g, j] - mean) * (out[g, j] - mean)
            std = np.sqrt(squares / size)
            if std > 1e-8:
                for j in range(size):
                    out[g, j] = (out[g, j] - mean) / (std + 1e-8)


@njit(cache=True, nogil=True)
def scaled_moments(x):  # pragma: no cover - compiled
    """``(mean, var / scale**2, scale)`` of a non-empty 1-D array, as :func:`pgkit.ops.rewards._moments`: ``scale``
    is the power of two at or below the largest magnitude (1 if that is 0, infinite or NaN), the mean is IEEE's
    ``sum / n`` of ``x / scale`` times ``scale``, the variance two-pass, and NaN when the mean is not finite."""
    n = x.shape[0]
    big = 0.0
    for i in range(n):
        a = abs(x[i])
        if a > big or a != a:
            big = a
            if a != a:
                break
    scale = 2.0 ** np.floor(np.log2(big)) if (big > 0 and big < np.inf) else 1.0
    total = 0.0
    for i in range(n):
        total += x[i] / scale
    mean = total / n
    if not np.isfinite(mean):
        return mean * scale, np.nan, scale
    squares = 0.0
    for i in range(n):
        d = x[i] / scale - mean
        squares += d * d
    return mean * scale, squares / n, scale


@njit(cache=True, nogil=True, error_model="numpy")
def standardize_flat(x, mean, var_eps, out):  # pragma: no cover - compiled
    """``out = (x - mean) / sqrt(var_eps)`` (IEEE: a variance of 0 gives infinities, NaN stays NaN)."""
    inv = 1.0 / np.sqrt(var_eps)
    for i in range(x.shape[0]):
        out[i] = (x[i] - mean) * inv


def row_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """``shape`` as (rows, last axis): explicit, since ``reshape(-1, 0)`` cannot infer the rows of an empty axis."""
    return math.prod(shape[:-1]), shape[-1]


def empty_like_layout(x: np.ndarray) -> np.ndarray:
    """An uninitialised array shaped like the 2-D ``x`` with its memory order (so loops over both agree)."""
    return np.empty(x.shape, dtype=x.dtype, order="F" if x.strides[0] < x.strides[1] else "C")

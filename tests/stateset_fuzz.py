"""Shared by the differential fuzz tests of pgkit.ops against stateset-rl-core 0.1.1 (``test_ops_stateset_fuzz*.py``)
on random inputs that stateset-rl-core accepts.

Every draw is compared with stateset-rl-core in float64: to 1e-10 relative (with an absolute floor of 1e-10 times
the data's scale, for results that cancel to about 0), NaN and infinities in the same places. Where the README lists
a deliberate difference, the draw asserts pgkit's documented result instead. Inputs only pgkit takes (float32,
lists, torch tensors) are checked against stateset-rl-core on a float64 copy, to float32 precision.

Hypothesis runs derandomized, so CI sees the same draws every time; ``PGKIT_FUZZ_EXAMPLES=5000`` searches deeper.
"""

from __future__ import annotations

import math
import os

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

INF, NAN = math.inf, math.nan
SPECIALS = (INF, -INF, NAN)
FUZZ = settings(
    max_examples=int(os.environ.get("PGKIT_FUZZ_EXAMPLES", "60")),
    deadline=None,
    derandomize="PGKIT_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Lengths around the scan's edges: 0 and 1, the single-product range (up to 64) and the blocked one.
SIZES = st.one_of(st.integers(0, 3), st.integers(0, 70), st.integers(60, 260))


# ---- helpers ----


def vector(data: st.DataObject, n: int, scale: float = 1.0, specials: tuple[float, ...] = ()) -> np.ndarray:
    """``n`` normal float64 values times ``scale``; with ``specials``, half the draws get 1-3 of them put in."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    x = rng.standard_normal(n) * scale
    if specials and n and data.draw(st.booleans(), label="put in specials"):
        k = data.draw(st.integers(1, min(n, 3)), label="how many")
        x[rng.choice(n, k, replace=False)] = rng.choice(specials, k)
    return x


def scale_of(*arrays: np.ndarray) -> float:
    """The largest finite magnitude among the inputs, at least 1: the floor for absolute tolerances."""
    finite = [np.abs(a[np.isfinite(a)]).max() for a in map(np.asarray, arrays) if np.isfinite(a).any()]
    return max([1.0, *finite])


def assert_same(ours: object, theirs: object, scale: float = 1.0, rtol: float = 1e-10) -> None:
    """Equal shapes, NaN and infinities in the same places, the rest equal to ``rtol`` (floor ``rtol * scale``)."""
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * scale, equal_nan=True)


def discount(data: st.DataObject, label: str) -> float:
    """Mostly in [0, 1] (with 0 and 1 themselves); one draw in ten negative or not finite."""
    if data.draw(st.integers(0, 9), label=f"{label} odd") == 0:
        return data.draw(st.sampled_from([-0.5, -1.0, NAN, INF]), label=label)
    return data.draw(st.one_of(st.sampled_from([0.0, 0.5, 0.95, 0.99, 1.0]), st.floats(0.0, 1.0)), label=label)


# ---- the API itself ----

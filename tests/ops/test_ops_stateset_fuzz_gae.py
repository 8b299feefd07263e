"""Differential fuzz of pgkit.ops' GAE against stateset-rl-core 0.1.1 (helpers and settings: stateset_fuzz.py)."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
import stateset_rl_core as stateset
import torch
from hypothesis import given
from hypothesis import strategies as st
from stateset_fuzz import FUZZ, INF, NAN, SIZES, SPECIALS, assert_same, discount, scale_of, vector

import pgkit
import pgkit.ops as ops


def test_api_names_and_version() -> None:
    assert set(stateset.__all__) - {"__version__"} <= set(ops.__all__)
    assert "__version__" in stateset.__all__ and "__version__" in ops.__all__
    assert ops.__version__ == pgkit.__version__ == importlib.metadata.version("pgkit")
    assert ops.clip_rewards_py is ops.clip_rewards


# ---- GAE ----


@FUZZ
@given(st.data())
def test_compute_gae(data: st.DataObject) -> None:
    n = data.draw(SIZES, label="n")
    bootstrap = data.draw(st.booleans(), label="bootstrap")
    rewards = vector(data, n, specials=SPECIALS)
    values = vector(data, n + bootstrap, specials=SPECIALS)
    gamma, lam = discount(data, "gamma"), discount(data, "lambda")
    ours = ops.compute_gae(rewards, values, gamma, lam)
    assert_same(ours, stateset.compute_gae(rewards, values, gamma, lam), scale_of(rewards, values) * (n + 1))
    # Tensors take the same path: the same numbers, bit for bit.
    tensor = ops.compute_gae(torch.from_numpy(rewards), torch.from_numpy(values), gamma, lam)
    np.testing.assert_array_equal(tensor.numpy(), ours)
    # float32 (stateset-rl-core takes float64 only) stays float32 and agrees to float32 precision.
    if np.isfinite(ours).all() and 0 <= gamma * lam <= 1:
        single = ops.compute_gae(rewards.astype(np.float32), values.astype(np.float32), gamma, lam)
        assert single.dtype == np.float32
        assert_same(single, ours, scale_of(rewards, values) * (n + 1), rtol=1e-4)
    # Deliberate difference: values of another length than n or n + 1 are an error (stateset-rl-core pads them
    # with zeros or ignores the surplus).
    wrong = data.draw(st.sampled_from([n + 2, n - 1]).filter(lambda m: m >= 0), label="wrong length")
    stateset.compute_gae(rewards, np.zeros(wrong), gamma, lam)  # accepted there
    with pytest.raises(ValueError, match="values"):
        ops.compute_gae(rewards, np.zeros(wrong), gamma, lam)


@FUZZ
@given(st.data())
def test_batch_compute_gae(data: st.DataObject) -> None:
    count = data.draw(st.integers(0, 5), label="trajectories")
    table = data.draw(st.booleans(), label="2-D arrays")  # else a list of 1-D arrays of any lengths
    steps = data.draw(SIZES, label="steps")
    lengths = [steps] * count if table else [data.draw(SIZES, label="length") for _ in range(count)]
    bootstrap = data.draw(st.booleans(), label="bootstrap")
    rewards = [vector(data, n, specials=SPECIALS) for n in lengths]
    values = [vector(data, n + bootstrap, specials=SPECIALS) for n in lengths]
    if table:
        rewards = np.array(rewards).reshape(count, steps)
        values = np.array(values).reshape(count, steps + bootstrap)
    gamma, lam = discount(data, "gamma"), discount(data, "lambda")
    ours = ops.batch_compute_gae(rewards, values, gamma, lam)
    theirs = stateset.batch_compute_gae(rewards, values, gamma, lam)
    assert len(ours) == len(theirs) == count
    for n, r, v, a, b in zip(lengths, rewards, values, ours, theirs, strict=True):
        assert isinstance(a, np.ndarray) and a.dtype == np.float64
        assert_same(a, b, scale_of(r, v) * (n + 1))
    if table:
        tensors = ops.batch_compute_gae(torch.from_numpy(rewards), torch.from_numpy(values), gamma, lam)
    else:
        tensors = ops.batch_compute_gae([torch.from_numpy(r) for r in rewards], [torch.from_numpy(v) for v in values],
                                        gamma, lam)
    for a, t in zip(ours, tensors, strict=True):
        np.testing.assert_array_equal(t.numpy(), a)


@FUZZ
@given(st.data())
def test_batch_compute_gae_rows_keep_their_dtype(data: st.DataObject) -> None:
    """float32 rows (stateset-rl-core takes float64 only): the batch is solved in its widest dtype and every row
    comes back in its own rewards' dtype, so a float32 row never rounds the float64 rows after it."""
    lengths = data.draw(st.lists(SIZES, min_size=1, max_size=4), label="lengths")
    single = data.draw(st.lists(st.booleans(), min_size=2 * len(lengths), max_size=2 * len(lengths)), label="f32")
    rewards = [vector(data, n) for n in lengths]
    values = [vector(data, n + 1) for n in lengths]
    rewards_in = [r.astype(np.float32) if f else r for r, f in zip(rewards, single, strict=False)]
    values_in = [v.astype(np.float32) if f else v for v, f in zip(values, single[len(lengths):], strict=False)]
    ours = ops.batch_compute_gae(rewards_in, values_in, 0.99, 0.95)
    theirs = stateset.batch_compute_gae([r.astype(np.float64) for r in rewards_in],
                                        [v.astype(np.float64) for v in values_in], 0.99, 0.95)
    # Solved in float64 if any row is float64, from the (rounded) inputs: its float32 rows lose only the last rounding.
    widest = np.float64 if not all(single) else np.float32
    for n, r, a, b in zip(lengths, rewards_in, ours, theirs, strict=True):
        assert a.dtype == r.dtype
        rtol = 1e-10 if r.dtype == np.float64 else 1e-6 if widest == np.float64 else 1e-4
        assert_same(a, b, scale_of(b) * (n + 1), rtol=rtol)


@FUZZ
@given(st.data())
def test_batch_compute_gae_non_contiguous_rows(data: st.DataObject) -> None:
    """Deliberate difference: strided rows and Fortran-ordered arrays are read as they are (stateset-rl-core
    reads such a rewards row as empty and such a values row as zeros)."""
    count, steps = data.draw(st.integers(1, 4), label="trajectories"), data.draw(SIZES, label="steps")
    rewards = np.stack([vector(data, steps) for _ in range(count)])
    values = np.stack([vector(data, steps + 1) for _ in range(count)])
    expected = stateset.batch_compute_gae(list(rewards), list(values))
    if data.draw(st.booleans(), label="fortran"):
        strided_rewards, strided_values = np.asfortranarray(rewards), np.asfortranarray(values)
    else:
        strided_rewards, strided_values = np.repeat(rewards, 2, axis=1)[:, ::2], np.repeat(values, 2, axis=1)[:, ::2]
    for ours in (ops.batch_compute_gae(strided_rewards, strided_values),
                 ops.batch_compute_gae(list(strided_rewards), list(strided_values))):
        for a, b in zip(ours, expected, strict=True):
            assert_same(a, b, scale_of(rewards, values) * (steps + 1))


def test_batch_compute_gae_deliberate_errors() -> None:
    """Deliberate differences: stateset-rl-core zips to the shorter list and pads short values with zeros."""
    assert stateset.batch_compute_gae([np.ones(3)], [np.ones(4), np.ones(4)])[0].shape == (3,)
    with pytest.raises(ValueError, match="value arrays"):
        ops.batch_compute_gae([np.ones(3)], [np.ones(4), np.ones(4)])
    assert stateset.batch_compute_gae(np.ones((2, 3)), np.ones((2, 2)))[0].shape == (3,)
    with pytest.raises(ValueError, match="values"):
        ops.batch_compute_gae(np.ones((2, 3)), np.ones((2, 2)))


def test_gae_non_finite_follows_the_recursion() -> None:
    """Hand cases: an infinity or NaN reaches the steps up to it and no later one, as the loop computes."""
    zeros = np.zeros(4)
    np.testing.assert_array_equal(ops.compute_gae(np.array([1.0, INF, 1.0]), zeros), [INF, INF, 1.0])
    np.testing.assert_array_equal(ops.compute_gae(np.array([1.0, INF, 1.0]), zeros, 0.0), [NAN, INF, 1.0])
    np.testing.assert_array_equal(ops.compute_gae(np.array([1.0, 1.0, 1.0]), [0, INF, 0, 0]), [NAN, -INF, 1.0])
    np.testing.assert_array_equal(ops.compute_gae(np.array([1.0, INF, 3.0, -INF]), np.zeros(5), -0.5, 1.0),
                                  [NAN, NAN, INF, -INF])
    long = np.r_[np.ones(150), INF, np.ones(149)]  # the blocked scan
    out = ops.batch_compute_gae([long, np.ones(7)], [np.zeros(301), np.zeros(8)])
    assert np.isposinf(out[0][:151]).all() and np.isfinite(out[0][151:]).all() and np.isfinite(out[1]).all()
    np.testing.assert_array_equal(ops.compute_gae(np.ones(3), np.zeros(4), 0.99, NAN), [NAN] * 3)


# ---- group advantages ----

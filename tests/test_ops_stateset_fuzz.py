"""Differential fuzz of pgkit.ops against stateset-rl-core 0.1.1 on random inputs that stateset-rl-core accepts.

Every draw is compared with stateset-rl-core in float64: to 1e-10 relative (with an absolute floor of 1e-10 times
the data's scale, for results that cancel to about 0), NaN and infinities in the same places. Where the README lists
a deliberate difference, the draw asserts pgkit's documented result instead. Inputs only pgkit takes (float32,
lists, torch tensors) are checked against stateset-rl-core on a float64 copy, to float32 precision.

Hypothesis runs derandomized, so CI sees the same draws every time; ``PGKIT_FUZZ_EXAMPLES=5000`` searches deeper.
"""

from __future__ import annotations

import importlib.metadata
import math
import os

import numpy as np
import pytest
import stateset_rl_core as stateset
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgkit
import pgkit.ops as ops

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


@FUZZ
@given(st.data())
def test_compute_group_advantages(data: st.DataObject) -> None:
    groups, size = data.draw(st.integers(0, 6), label="groups"), data.draw(st.integers(0, 9), label="size")
    rewards = vector(data, groups * size, scale=data.draw(st.sampled_from([1e-3, 1.0, 100.0]))).reshape(groups, size)
    for g in range(groups):  # some groups whose rewards all agree, or nearly, and some with infinities
        kind = data.draw(st.sampled_from(["random"] * 4 + ["same", "nearly", "infinite"]), label="group")
        if kind == "same":
            rewards[g] = 2.5
        elif kind == "nearly" and size:
            rewards[g] = 1.0 + 1e-9 * np.arange(size)
        elif kind == "infinite" and size:
            rewards[g, data.draw(st.integers(0, size - 1))] = data.draw(st.sampled_from([INF, -INF]))
    layout = data.draw(st.sampled_from(["C", "F", "strided"]), label="layout")
    if layout == "F":
        rewards = np.asfortranarray(rewards)
    elif layout == "strided":
        rewards = np.repeat(rewards, 2, axis=1)[:, ::2]
    baseline, normalize = data.draw(st.sampled_from(["mean", "median", "min"])), data.draw(st.booleans())
    ours = ops.compute_group_advantages(rewards, baseline, normalize)
    assert_same(ours, stateset.compute_group_advantages(rewards, baseline, normalize), scale_of(rewards))
    # Deliberate difference: a NaN makes its whole group NaN for every baseline (stateset-rl-core's min skips it).
    if groups and size:
        poisoned = np.array(rewards)
        g = data.draw(st.integers(0, groups - 1), label="NaN group")
        poisoned[g, data.draw(st.integers(0, size - 1))] = NAN
        with_nan = ops.compute_group_advantages(poisoned, baseline, normalize).reshape(groups, size)
        assert np.isnan(with_nan[g]).all()
        others = np.arange(groups) != g
        assert_same(with_nan[others], ours.reshape(groups, size)[others])


def test_group_advantages_deliberate_differences() -> None:
    stateset.compute_group_advantages(np.ones((2, 2)), "max", True)  # accepted there: falls back to the mean
    with pytest.raises(ValueError, match="baseline_type"):
        ops.compute_group_advantages(np.ones((2, 2)), "max", True)
    for baseline in ("mean", "median", "min"):  # zero-width groups: nothing to return, as stateset-rl-core
        for normalize in (True, False):
            assert ops.compute_group_advantages(np.ones((3, 0)), baseline, normalize).shape == (0,)
            assert ops.group_baseline(torch.ones(3, 0), baseline).isnan().all()


# ---- rewards ----


@FUZZ
@given(st.data())
def test_normalize_rewards(data: st.DataObject) -> None:
    n = data.draw(SIZES, label="n")
    shift, spread = data.draw(st.floats(-5, 5), label="shift"), data.draw(st.sampled_from([1e-3, 1.0, 30.0]))
    rewards = vector(data, n, scale=spread, specials=SPECIALS) + shift
    count = data.draw(st.one_of(st.sampled_from([0, 1, 10, 10_000]), st.integers(0, 10**6)), label="count")
    prior_mean, prior_var = data.draw(st.floats(-10, 10), label="mean"), data.draw(st.floats(0, 50), label="var")
    epsilon = data.draw(st.sampled_from([1e-8, 1e-3]), label="epsilon")
    normalized, mean, var, total = ops.normalize_rewards(rewards, prior_mean, prior_var, count, epsilon)
    assert total == count + n and isinstance(mean, float) and isinstance(var, float)
    if np.isfinite(rewards).all():
        theirs = stateset.normalize_rewards(rewards, prior_mean, prior_var, count, epsilon)
        scale = scale_of(rewards, [prior_mean])
        assert_same(normalized, theirs[0], scale / math.sqrt(epsilon + (theirs[2] if n else prior_var)))
        assert_same([mean, var], theirs[1:3], scale * scale)
        assert total == theirs[3]
        if n:  # float32 (stateset-rl-core takes float64 only) stays float32
            single = ops.normalize_rewards(rewards.astype(np.float32), prior_mean, prior_var, count, epsilon)
            assert single[0].dtype == np.float32
            assert_same([single[1], single[2]], theirs[1:3], scale * scale, rtol=1e-4)
    else:
        # Deliberate difference: the mean is the IEEE mean of all the data, whatever the order (stateset-rl-core's
        # loop gives NaN for [inf, 1] but inf for [1, inf]), and the variance over an infinity is NaN.
        with np.errstate(invalid="ignore"):  # inf - inf
            expected = prior_mean * (count / (count + n)) + np.mean(rewards) * (n / (count + n))
        assert_same(mean, expected, scale_of(rewards, [prior_mean]))
        assert math.isnan(var) and np.isnan(normalized).all()
        again = ops.normalize_rewards(rewards[::-1].copy(), prior_mean, prior_var, count, epsilon)
        assert_same(again[1:3], [mean, var])
    # Deliberate difference: a negative count is an error (stateset-rl-core computes with it).
    with pytest.raises(ValueError, match="count"):
        ops.normalize_rewards(rewards, prior_mean, prior_var, -1 - count)


def test_normalize_rewards_non_finite_by_hand() -> None:
    for order in ([INF, 1.0], [1.0, INF]):
        normalized, mean, var, count = ops.normalize_rewards(np.array(order))
        assert mean == INF and math.isnan(var) and np.isnan(normalized).all() and count == 2
    _, mean, var, _ = ops.normalize_rewards(np.array([INF]))
    assert mean == INF and math.isnan(var)  # stateset-rl-core: variance 0
    _, mean, var, _ = ops.normalize_rewards(np.array([1.0]), INF, 1.0, 3)
    assert mean == INF and math.isnan(var)  # stateset-rl-core: mean NaN
    _, mean, var, _ = ops.normalize_rewards(np.array([1.0, 2.0]), NAN, 1.0, 0)
    assert math.isnan(mean) and math.isnan(var)  # a prior of weight 0 is still NaN, as stateset-rl-core
    # Finite rewards near the float64 limit do not overflow (as stateset-rl-core).
    normalized, mean, var, _ = ops.normalize_rewards(np.array([1e308, 1e308]))
    assert (mean, var) == (1e308, 0.0) and (normalized == 0).all()


@FUZZ
@given(st.data())
def test_clip_rewards(data: st.DataObject) -> None:
    rewards = vector(data, data.draw(SIZES, label="n"), scale=3.0, specials=SPECIALS)
    low, high = sorted(data.draw(st.lists(st.one_of(st.floats(-4, 4), st.sampled_from([-INF, INF])),
                                          min_size=2, max_size=2), label="bounds"))
    if data.draw(st.booleans(), label="equal bounds"):
        high = low if math.isfinite(low) else high
    assert_same(ops.clip_rewards_py(rewards, low, high), stateset.clip_rewards_py(rewards, low, high))
    # Deliberate difference: an empty range or a NaN bound is an error even for an empty batch (stateset-rl-core
    # panics on a non-empty one and returns an empty one unchanged).
    bad = data.draw(st.sampled_from([(high + 1.0, high) if math.isfinite(high) else (1.0, 0.0), (NAN, high),
                                     (low, NAN)]), label="bad bounds")
    assert stateset.clip_rewards_py(np.array([]), *bad).shape == (0,)
    for batch in (rewards, np.array([])):
        with pytest.raises(ValueError, match="min_val <= max_val"):
            ops.clip_rewards(batch, *bad)


@FUZZ
@given(st.data())
def test_compute_reward_statistics(data: st.DataObject) -> None:
    n = data.draw(SIZES, label="n")
    values = vector(data, n, scale=data.draw(st.sampled_from([1e-3, 1.0, 1e4])), specials=(INF, -INF))
    kind = data.draw(st.sampled_from(["float64", "float32", "int64", "list", "tuple", "strided"]), label="kind")
    if kind == "int64":
        values = np.where(np.isfinite(values), np.round(values), 0.0)
    rewards = {
        "float64": lambda: values, "float32": lambda: values.astype(np.float32), "int64": lambda: values.astype(int),
        "list": values.tolist, "tuple": lambda: tuple(values.tolist()), "strided": lambda: np.repeat(values, 2)[::2],
    }[kind]()
    ours, theirs = ops.compute_reward_statistics(rewards), stateset.compute_reward_statistics(rewards)
    assert ours["count"] == n and all(isinstance(v, float) for v in ours.values())
    if n == 0:  # Deliberate difference: the empty statistics include the count.
        assert theirs == {k: 0.0 for k in ("mean", "std", "min", "max", "median")}
        assert ours == {**theirs, "count": 0.0}
        return
    assert set(ours) == set(theirs)
    for key in ours:  # every kind of input computed in float64, as stateset-rl-core
        assert_same(ours[key], theirs[key], scale_of(values))
    # [inf, 1] and [1, inf] alike: no statistic depends on the order.
    backwards = np.asarray(rewards, dtype=np.float64)[::-1].copy()
    assert_same(list(ops.compute_reward_statistics(backwards).values()), list(ours.values()), scale_of(values))
    # Deliberate difference: NaN gives NaN statistics (stateset-rl-core panics, or for NaNs only says min inf and
    # max -inf).
    with_nan = ops.compute_reward_statistics(np.r_[values, NAN])
    assert all(math.isnan(with_nan[k]) for k in ("mean", "std", "min", "max", "median"))
    assert with_nan["count"] == n + 1


def test_reward_statistics_by_hand() -> None:
    for order in ([INF, 1.0], [1.0, INF]):
        stats = ops.compute_reward_statistics(np.array(order))
        assert stats["mean"] == stats["max"] == stats["median"] == INF and math.isnan(stats["std"])
        assert stats == pytest.approx(stateset.compute_reward_statistics(np.array(order)), nan_ok=True)
    # float32 numpy input is computed in float64, as stateset-rl-core; a float32 tensor in float32.
    third = np.array([0.1, 0.2, 0.3], dtype=np.float32)
    assert ops.compute_reward_statistics(third)["mean"] == np.mean(third.astype(np.float64))
    tensor = ops.compute_reward_statistics(torch.from_numpy(third))
    assert tensor["mean"].dtype == torch.float32 and tensor["count"].dtype == torch.float32
    # Deliberate difference: finite rewards near the float64 limit do not overflow (stateset-rl-core says inf).
    stats = ops.compute_reward_statistics(np.array([1e308, 1e308, -1e308]))
    assert stats["mean"] == pytest.approx(1e308 / 3) and stats["std"] == pytest.approx(math.sqrt(8 / 9) * 1e308)
    assert ops.compute_reward_statistics(np.array([1e308, 1e308]))["median"] == 1e308
    assert stateset.compute_reward_statistics(np.array([1e308, 1e308]))["median"] == INF
    assert math.isnan(ops.compute_reward_statistics(np.array([NAN]))["min"])  # stateset-rl-core: inf


# ---- GSPO and PPO ----


@FUZZ
@given(st.data())
def test_compute_gspo_importance_ratios(data: st.DataObject) -> None:
    n = data.draw(SIZES, label="n")
    new = vector(data, n, scale=20.0, specials=SPECIALS) - 30.0
    old = vector(data, n, scale=20.0, specials=SPECIALS) - 30.0
    lengths = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).integers(-2, 200, n)
    ours = ops.compute_gspo_importance_ratios(new, old, lengths)
    assert_same(ours, stateset.compute_gspo_importance_ratios(new, old, lengths), 1.0)
    if n:  # Deliberate difference: inputs of different lengths are an error (stateset-rl-core truncates).
        stateset.compute_gspo_importance_ratios(new, old[:-1], lengths)
        with pytest.raises(ValueError, match="one shape"):
            ops.compute_gspo_importance_ratios(new, old[:-1], lengths)


def ratios_and_advantages(data: st.DataObject, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """Ratios near 1 (some exactly on a bound, 1 or 0) and advantages (some 0), both with the odd infinity/NaN."""
    n = data.draw(SIZES, label="n")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    ratios = np.exp(rng.standard_normal(n) * 0.3)
    on_a_point = rng.random(n) < 0.1
    ratios[on_a_point] = rng.choice([low, high, 1.0, 0.0], on_a_point.sum())
    advantages = rng.standard_normal(n)
    advantages[rng.random(n) < 0.1] = 0.0
    if n and data.draw(st.booleans(), label="specials"):
        for x, specials in ((ratios, (INF, -INF, NAN, 0.0)), (advantages, (INF, -INF, NAN, 0.0))):
            k = rng.integers(1, min(n, 3) + 1)
            x[rng.choice(n, k, replace=False)] = rng.choice(specials, k)
    return ratios, advantages


@FUZZ
@given(st.data())
def test_apply_gspo_clipping(data: st.DataObject) -> None:
    left = data.draw(st.one_of(st.sampled_from([0.0, 3e-4, 0.2]), st.floats(0, 0.5)), label="clip_left")
    right = data.draw(st.one_of(st.sampled_from([0.0, 4e-4, 0.28]), st.floats(0, 0.5)), label="clip_right")
    ratios, advantages = ratios_and_advantages(data, 1 - left, 1 + right)
    ours = ops.apply_gspo_clipping(ratios, advantages, left, right)
    theirs = stateset.apply_gspo_clipping(ratios, advantages, left, right)
    # Deliberate difference: a NaN ratio gives NaN (stateset-rl-core: the bound times the advantage).
    nan_ratio = np.isnan(ratios)
    assert np.isnan(ours[nan_ratio]).all()
    assert_same(ours[~nan_ratio], theirs[~nan_ratio], scale_of(advantages))
    check_surrogate_errors(ops.apply_gspo_clipping, stateset.apply_gspo_clipping, ratios, advantages,
                           data.draw(st.sampled_from([(0.5, -0.7), (NAN, 0.1), (0.1, NAN)]), label="bad clip"))


@FUZZ
@given(st.data())
def test_compute_ppo_surrogate(data: st.DataObject) -> None:
    eps = data.draw(st.one_of(st.sampled_from([0.0, 0.1, 0.2, 1.0, INF]), st.floats(0, 1)), label="clip_epsilon")
    ratios, advantages = ratios_and_advantages(data, 1 - eps, 1 + eps)
    ours = ops.compute_ppo_surrogate(ratios, advantages, eps)
    theirs = stateset.compute_ppo_surrogate(ratios, advantages, eps)
    # Deliberate difference: pgkit computes A * min(r, 1 + eps) for A >= 0 and A * max(r, 1 - eps) else (the same
    # numbers as min(r * A, clip(r) * A)); where that is 0 * inf it is NaN, where stateset-rl-core's min skips its
    # NaN product and returns the other one.
    chosen = np.where(advantages >= 0, np.minimum(ratios, 1 + eps), np.maximum(ratios, 1 - eps))
    zero_times_inf = (np.isinf(advantages) & (chosen == 0)) | ((advantages == 0) & np.isinf(chosen))
    assert np.isnan(ours[zero_times_inf]).all()
    assert_same(ours[~zero_times_inf], theirs[~zero_times_inf], scale_of(advantages))
    if np.isfinite(ours).all() and len(ours):  # float32 (stateset-rl-core takes float64 only) stays float32
        single = ops.compute_ppo_surrogate(ratios.astype(np.float32), advantages.astype(np.float32), eps)
        assert single.dtype == np.float32
        assert_same(single, ours, scale_of(advantages), rtol=1e-6)
    check_surrogate_errors(ops.compute_ppo_surrogate, stateset.compute_ppo_surrogate, ratios, advantages,
                           (data.draw(st.sampled_from([-0.1, NAN]), label="bad clip"),))


def check_surrogate_errors(ours, theirs, ratios: np.ndarray, advantages: np.ndarray, bad_clip: tuple) -> None:
    """Deliberate differences: inputs of different lengths and an empty or NaN clip range are errors, even for
    empty inputs (stateset-rl-core truncates to the shorter input, and panics on or ignores the bad range)."""
    if len(ratios):
        theirs(ratios[:-1], advantages)  # accepted there
        with pytest.raises(ValueError, match="one shape"):
            ours(ratios[:-1], advantages)
    theirs(np.array([]), np.array([]), *bad_clip)  # accepted there
    for r, a in ((ratios, advantages), (np.array([]), np.array([]))):
        with pytest.raises(ValueError, match="clip range"):
            ours(r, a, *bad_clip)


def test_surrogates_by_hand() -> None:
    # An infinite ratio with advantage 0 contributes 0 in both (limits agree); a NaN ratio is NaN in pgkit only.
    np.testing.assert_array_equal(ops.compute_ppo_surrogate(np.array([INF, INF]), np.array([0.0, -1.0])), [0, -INF])
    np.testing.assert_array_equal(stateset.compute_ppo_surrogate(np.array([INF, INF]), np.array([0.0, -1.0])),
                                  [0, -INF])
    assert np.isnan(ops.apply_gspo_clipping(np.array([NAN]), np.array([1.0]))).all()
    assert stateset.apply_gspo_clipping(np.array([NAN]), np.array([1.0]))[0] == pytest.approx(1.0004)
    assert np.isnan(ops.compute_ppo_surrogate(np.array([0.0]), np.array([INF]))).all()
    assert stateset.compute_ppo_surrogate(np.array([0.0]), np.array([INF]))[0] == INF

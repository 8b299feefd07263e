"""Differential fuzz of pgkit.ops' group advantages, reward statistics and surrogates against stateset-rl-core
0.1.1 (helpers and settings: stateset_fuzz.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import stateset_rl_core as stateset
import torch
from hypothesis import given
from hypothesis import strategies as st
from stateset_fuzz import FUZZ, INF, NAN, SIZES, SPECIALS, assert_same, scale_of, vector

import pgkit.ops as ops


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

"""pgkit.ops: parity with stateset-rl-core, hand-computed values, edge cases and the documented differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import stateset_rl_core as stateset
import torch
from torchrl.objectives.value.functional import vec_generalized_advantage_estimate

import pgkit.ops as ops
from pgkit.ops.scan import discounted_reverse_cumsum

RNG = np.random.default_rng(1234)


def sequential_scan(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """The recursion y[t] = x[t] + a[t] y[t+1], one step at a time."""
    y, acc = np.zeros_like(x), np.zeros(x.shape[:-1])
    for t in reversed(range(x.shape[-1])):
        acc = x[..., t] + a[..., t] * acc
        y[..., t] = acc
    return y


@pytest.mark.parametrize("steps", [0, 1, 2, 15, 16, 17, 64, 65, 100, 1000, 1025, 4097])
def test_scan_matches_the_recursion(steps: int) -> None:
    x = RNG.standard_normal((3, steps))
    stops = 0.97 * (RNG.random((3, steps)) > 0.05)
    constant = discounted_reverse_cumsum(torch.from_numpy(x), 0.97).numpy()
    varying = discounted_reverse_cumsum(torch.from_numpy(x), torch.from_numpy(stops)).numpy()
    np.testing.assert_allclose(constant, sequential_scan(x, np.full_like(x, 0.97)), atol=1e-12)
    np.testing.assert_allclose(varying, sequential_scan(x, stops), atol=1e-12)


def test_scan_survives_underflowing_discounts() -> None:
    x = RNG.standard_normal((2, 3000))
    for discount in (0.0, 1e-3, 0.5):
        out = discounted_reverse_cumsum(torch.from_numpy(x), discount).numpy()
        np.testing.assert_allclose(out, sequential_scan(x, np.full_like(x, discount)), atol=1e-12)


def test_masked_gae_equals_torchrl() -> None:
    """The trainers' GAE (terminated stops the bootstrap, truncated only the trace) against TorchRL's."""
    steps, envs = 300, 5
    g = torch.Generator().manual_seed(0)
    reward, value, next_value = (torch.randn(steps, envs, generator=g, dtype=torch.float64) for _ in range(3))
    terminated = torch.rand(steps, envs, generator=g) < 0.03
    truncated = (torch.rand(steps, envs, generator=g) < 0.03) & ~terminated
    advantage, target = ops.gae(reward, value, next_value, terminated, truncated, 0.99, 0.95)

    def tr(x: torch.Tensor) -> torch.Tensor:
        return x.T.unsqueeze(-1)

    ref_adv, ref_target = vec_generalized_advantage_estimate(
        0.99, 0.95, tr(value), tr(next_value), tr(reward), tr(terminated | truncated), tr(terminated)
    )
    torch.testing.assert_close(advantage, ref_adv.squeeze(-1).T)
    torch.testing.assert_close(target, ref_target.squeeze(-1).T)


# ---- stateset-rl-core parity on random inputs ----


def test_compute_gae_parity_and_hand_values() -> None:
    rewards, values = np.array([1.0, 0.0, 1.0, 0.0]), np.array([0.5, 0.5, 0.5, 0.5, 0.0])
    # Hand: deltas [0.995, -0.005, 0.995, -0.5]; A3=-0.5, A2=0.995+0.9405*(-0.5)=0.52475, ...
    a3 = -0.5
    a2 = 0.995 + 0.9405 * a3
    a1 = -0.005 + 0.9405 * a2
    a0 = 0.995 + 0.9405 * a1
    np.testing.assert_allclose(ops.compute_gae(rewards, values), [a0, a1, a2, a3], atol=1e-12)
    for n in (1, 7, 300):
        r, v = RNG.standard_normal(n), RNG.standard_normal(n + 1)
        for gamma, lam in ((0.99, 0.95), (0.9, 1.0), (1.0, 0.0)):
            np.testing.assert_allclose(
                ops.compute_gae(r, v, gamma, lam), stateset.compute_gae(r, v, gamma, lam), atol=1e-10
            )
        # n values: bootstrap 0, as stateset-rl-core
        np.testing.assert_allclose(ops.compute_gae(r, v[:n]), stateset.compute_gae(r, v[:n]), atol=1e-10)


def test_batch_compute_gae_parity_equal_and_ragged() -> None:
    for lengths in ([50] * 8, [1, 5, 17, 300, 64, 65, 2]):
        rewards = [RNG.standard_normal(n) for n in lengths]
        values = [RNG.standard_normal(n + 1) for n in lengths]
        ours = ops.batch_compute_gae(rewards, values, 0.98, 0.9)
        theirs = stateset.batch_compute_gae(rewards, values, 0.98, 0.9)
        assert [len(a) for a in ours] == lengths
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-10)
    assert ops.batch_compute_gae([], []) == [] == stateset.batch_compute_gae([], [])


def test_batch_compute_gae_results_survive_the_next_call() -> None:
    """numpy inputs are packed in a reused buffer: the returned arrays must not live in it."""
    first = ops.batch_compute_gae([np.ones(100)], [np.zeros(101)])
    expected = first[0].copy()
    ops.batch_compute_gae([np.full(100, 5.0)], [np.ones(101)])
    np.testing.assert_array_equal(first[0], expected)


@pytest.mark.parametrize("baseline", ["mean", "median", "min"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("shape", [(64, 8), (33, 5), (4, 1), (1, 16)])
def test_group_advantages_parity(baseline: str, normalize: bool, shape: tuple[int, int]) -> None:
    rewards = RNG.standard_normal(shape)
    rewards[0] = 2.5  # a zero-variance group
    ours = ops.compute_group_advantages(rewards, baseline, normalize)
    np.testing.assert_allclose(ours, stateset.compute_group_advantages(rewards, baseline, normalize), atol=1e-10)
    assert ours.shape == (shape[0] * shape[1],)  # flattened, as stateset-rl-core returns it


def test_group_advantages_hand_values() -> None:
    rewards = np.array([[1.0, 2.0, 3.0, 10.0]])
    np.testing.assert_allclose(ops.compute_group_advantages(rewards, "median", False), [-1.5, -0.5, 0.5, 7.5])
    np.testing.assert_allclose(ops.compute_group_advantages(rewards, "min", False), [0.0, 1.0, 2.0, 9.0])
    std = math.sqrt(((np.array([1, 2, 3, 10]) - 4.0) ** 2).mean())
    np.testing.assert_allclose(
        ops.compute_group_advantages(rewards, "min", True), (np.array([1, 2, 3, 10]) - 4.0) / (std + 1e-8)
    )


def test_normalize_rewards_parity_and_welford() -> None:
    np.testing.assert_allclose(ops.normalize_rewards(np.array([1.0, 2.0, 3.0]))[0], [-1.2247448, 0, 1.2247448], 1e-6)
    for prior in ((0.0, 1.0, 0), (1.5, 4.0, 10), (-3.0, 0.25, 1000)):
        rewards = RNG.standard_normal(257) * 3 + 1
        ours, theirs = ops.normalize_rewards(rewards, *prior), stateset.normalize_rewards(rewards, *prior)
        np.testing.assert_allclose(ours[0], theirs[0], atol=1e-10)
        assert ours[1:] == pytest.approx(theirs[1:], abs=1e-10)
        assert isinstance(ours[1], float) and ours[3] == prior[2] + 257
    # Chaining batches equals one batch of everything.
    a, b = RNG.standard_normal(100), RNG.standard_normal(50)
    _, mean, var, count = ops.normalize_rewards(a)
    _, mean, var, count = ops.normalize_rewards(b, mean, var, count)
    assert (mean, var, count) == pytest.approx((np.r_[a, b].mean(), np.r_[a, b].var(), 150))


def test_clip_and_statistics_parity() -> None:
    rewards = RNG.standard_normal(1001) * 4
    np.testing.assert_array_equal(ops.clip_rewards(rewards, -1.0, 2.0), stateset.clip_rewards_py(rewards, -1.0, 2.0))
    assert ops.clip_rewards_py is ops.clip_rewards
    for n in (1, 2, 1000, 1001):
        ours, theirs = ops.compute_reward_statistics(rewards[:n]), stateset.compute_reward_statistics(rewards[:n])
        assert ours == pytest.approx(theirs, abs=1e-10)
    assert ops.compute_reward_statistics(np.array([1.0, 2.0, 3.0, 10.0]))["median"] == 2.5


def test_gspo_and_ppo_parity_and_hand_values() -> None:
    new, old = np.array([-10.0, -12.0, -11.0]), np.array([-10.5, -11.5, -11.0])
    lengths = np.array([50, 60, 55])
    np.testing.assert_allclose(
        ops.compute_gspo_importance_ratios(new, old, lengths), [math.exp(0.01), math.exp(-0.5 / 60), 1.0]
    )
    ratios, advantages = np.array([0.9, 1.0, 1.0002, 1.001, 0.9999, 1.1]), np.array([1.0, -1, 1, -1, -1, 1])
    np.testing.assert_allclose(
        ops.apply_gspo_clipping(ratios, advantages), [0.9, -1.0, 1.0002, -1.001, -0.9999, 1.0004], atol=1e-12
    )
    ratios, advantages = np.array([1.1, 0.9, 1.05, 1.5, 0.5]), np.array([1.0, -1, 0.5, 1, -1])
    np.testing.assert_allclose(ops.compute_ppo_surrogate(ratios, advantages), [1.1, -0.9, 0.525, 1.2, -0.8])
    n = 500
    new, old = RNG.standard_normal(n) * 5, RNG.standard_normal(n) * 5
    lengths = RNG.integers(0, 100, n)
    np.testing.assert_allclose(
        ops.compute_gspo_importance_ratios(new, old, lengths),
        stateset.compute_gspo_importance_ratios(new, old, lengths),
        rtol=1e-10,
    )
    ratios, advantages = np.exp(RNG.standard_normal(n) * 0.3), RNG.standard_normal(n)
    for left, right in ((3e-4, 4e-4), (0.2, 0.28)):
        np.testing.assert_allclose(
            ops.apply_gspo_clipping(ratios, advantages, left, right),
            stateset.apply_gspo_clipping(ratios, advantages, left, right),
        )
    np.testing.assert_allclose(
        ops.compute_ppo_surrogate(ratios, advantages, 0.1), stateset.compute_ppo_surrogate(ratios, advantages, 0.1)
    )


# ---- same kind in, same kind out; float32; devices ----


def test_torch_in_torch_out_and_float32() -> None:
    rewards = torch.randn(16, 4)
    out = ops.compute_group_advantages(rewards, "mean", True)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(
        out.numpy(), stateset.compute_group_advantages(rewards.double().numpy(), "mean", True), atol=1e-5
    )
    gae = ops.batch_compute_gae([torch.randn(10), torch.randn(4)], [torch.randn(11), torch.randn(5)])
    assert all(isinstance(a, torch.Tensor) for a in gae) and [len(a) for a in gae] == [10, 4]
    _, mean, _, count = ops.normalize_rewards(torch.tensor([1.0, 2.0, 3.0]))
    assert isinstance(mean, torch.Tensor) and float(mean) == 2.0 and count == 3
    stats = ops.compute_reward_statistics(torch.tensor([1.0, 2.0]))
    assert isinstance(stats["mean"], torch.Tensor)
    assert isinstance(ops.compute_gae(np.ones(3, dtype=np.float32), np.zeros(4, dtype=np.float32)), np.ndarray)


def test_gradients_flow_through_the_surrogate_and_sequence_ratio() -> None:
    new = torch.tensor([-3.0, -4.0], requires_grad=True)
    ratio = ops.sequence_ratio(new, torch.tensor([-3.5, -4.0]), torch.tensor([5, 2]))
    ops.clipped_surrogate(ratio, torch.tensor([1.0, -1.0]), 0.2, 0.2).sum().backward()
    # ratio_0 = e^0.1 = 1.105 (inside the clip), d/d new_0 = A * ratio / len = 1.105 / 5
    assert new.grad[0].item() == pytest.approx(math.exp(0.1) / 5)
    assert new.grad[1].item() == pytest.approx(-1.0 / 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_tensors_stay_on_the_gpu() -> None:
    rewards = [torch.randn(100, device="cuda") for _ in range(3)]
    values = [torch.randn(101, device="cuda") for _ in range(3)]
    out = ops.batch_compute_gae(rewards, values)
    assert out[0].device.type == "cuda"
    expected = stateset.batch_compute_gae([r.double().cpu().numpy() for r in rewards],
                                          [v.double().cpu().numpy() for v in values])
    np.testing.assert_allclose(out[0].double().cpu().numpy(), expected[0], atol=1e-4)


# ---- edge cases ----


def test_empty_inputs() -> None:
    assert ops.compute_gae(np.array([]), np.array([0.0])).shape == (0,)
    assert ops.compute_group_advantages(np.zeros((0, 4)), "mean", True).shape == (0,)
    normalized, mean, var, count = ops.normalize_rewards(np.array([]), 1.0, 2.0, 5)
    assert normalized.shape == (0,) and (mean, var, count) == (1.0, 2.0, 5)
    assert ops.compute_ppo_surrogate(np.array([]), np.array([])).shape == (0,)
    # Deliberate difference: stateset-rl-core leaves "count" out for an empty batch.
    stats = ops.compute_reward_statistics(np.array([]))
    assert stats == {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0, "median": 0.0, "count": 0.0}


def test_group_of_one_and_zero_variance() -> None:
    np.testing.assert_array_equal(ops.compute_group_advantages(np.array([[1.0], [2.0]]), "mean", True), [0.0, 0.0])
    np.testing.assert_array_equal(ops.compute_group_advantages(np.full((2, 4), 3.0), "median", True), np.zeros(8))
    # A spread at or below 1e-8 is left unnormalised (as stateset-rl-core), not blown up.
    tiny = np.array([[0.0, 2e-8]])
    np.testing.assert_allclose(ops.compute_group_advantages(tiny, "min", True), [0.0, 2e-8])
    assert ops.group_advantages(torch.ones(3, 4)).abs().max() == 0.0
    normalized, _, var, _ = ops.normalize_rewards(np.full(3, 4.0))
    np.testing.assert_array_equal(normalized, 0.0) and var == 0.0


def test_nan_propagates() -> None:
    rewards = np.r_[np.ones(100), np.nan, np.ones(99)]
    theirs = stateset.compute_gae(rewards, np.zeros(201))
    ours = ops.compute_gae(rewards, np.zeros(201))
    # As the step-by-step recursion: a NaN reaches the steps up to it, never later ones (the scan's matrix products
    # would spread it there); other trajectories of a batch are untouched.
    assert np.isnan(theirs[:101]).all() and not np.isnan(theirs[101:]).any()
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)
    batch = ops.batch_compute_gae([rewards, np.ones(200)], [np.zeros(201), np.zeros(201)])
    np.testing.assert_allclose(batch[0], theirs, rtol=1e-10)
    assert not np.isnan(batch[1]).any()
    assert np.isnan(ops.normalize_rewards(np.array([1.0, np.nan]))[0]).all()
    assert np.isnan(ops.clip_rewards(np.array([np.nan]), -1.0, 1.0)).all()
    # Deliberate differences: a NaN poisons its whole group for every baseline (stateset-rl-core's min skips it),
    # and statistics of NaN input are NaN (stateset-rl-core panics).
    for baseline in ("mean", "median", "min"):
        out = ops.compute_group_advantages(np.array([[1.0, np.nan, 3.0], [1.0, 2.0, 4.0]]), baseline, False)
        assert np.isnan(out[:3]).all() and not np.isnan(out[3:]).any()
    stats = ops.compute_reward_statistics(np.array([1.0, np.nan]))
    assert all(math.isnan(stats[k]) for k in ("mean", "std", "min", "max", "median")) and stats["count"] == 2.0


def test_deliberate_errors_where_stateset_guesses() -> None:
    with pytest.raises(ValueError, match="baseline_type"):
        ops.compute_group_advantages(np.ones((2, 2)), "max", True)  # stateset-rl-core silently uses the mean
    with pytest.raises(ValueError, match="min_val <= max_val"):
        ops.clip_rewards(np.ones(2), 1.0, -1.0)  # stateset-rl-core panics
    with pytest.raises(ValueError, match="values"):
        ops.compute_gae(np.ones(3), np.ones(6))  # stateset-rl-core ignores the extra values
    with pytest.raises(ValueError, match="value arrays"):
        ops.batch_compute_gae([np.ones(3)], [np.ones(4), np.ones(4)])  # stateset-rl-core zips to the shorter
    with pytest.raises(ValueError, match="one shape"):
        ops.compute_gspo_importance_ratios(np.ones(2), np.ones(1), np.ones(1, dtype=np.int64))


def test_grpo_group_advantages_follow_trl() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 4.0]])
    std = rewards.std(dim=1, keepdim=True)  # unbiased, as TRL
    torch.testing.assert_close(ops.group_advantages(rewards), (rewards - rewards.mean(1, keepdim=True)) / (std + 1e-4))
    by_min = rewards - rewards.amin(1, keepdim=True)
    torch.testing.assert_close(ops.group_advantages(rewards, "min", "batch"), by_min / (rewards.std() + 1e-4))
    torch.testing.assert_close(
        ops.group_advantages(rewards, "median", "none"), rewards - torch.tensor([[2.5], [0.0]])
    )
    assert ops.group_advantages(torch.tensor([[5.0], [7.0]])).abs().max() == 0.0


def test_kl_k3() -> None:
    d = torch.tensor([0.0, 0.5, -0.5])
    torch.testing.assert_close(ops.kl_k3(d), torch.exp(d) - d - 1)
    # Unbiased: E_p[k3] = KL(p||q) for p = N(0,1), q = N(0.3,1): KL = 0.045.
    x = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_ratio = -0.5 * (x - 0.3) ** 2 + 0.5 * x**2
    assert ops.kl_k3(log_ratio).mean().item() == pytest.approx(0.045, abs=1e-3)

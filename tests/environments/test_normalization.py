"""Running statistics, reward scaling and their checkpoint round trip."""

import numpy as np
import pytest
import torch

from pgkit.environments import ObservationNormalizer, RewardScaler, RunningMeanStd


def test_running_mean_std_matches_numpy():
    rng = np.random.default_rng(0)
    data = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (1, 7, 50, 3)]
    rms = RunningMeanStd((4,))
    for batch in data:
        rms.update(torch.as_tensor(batch))
    all_data = np.concatenate(data)
    # The initial pseudo-count of 1e-4 shifts the moments by O(1e-4 / N).
    np.testing.assert_allclose(rms.mean.numpy(), all_data.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rms.var.numpy(), all_data.var(0), rtol=1e-4, atol=1e-4)
    assert rms.count.item() == pytest.approx(61, abs=1e-3)


def test_observation_normalizer_clips_and_is_frozen_in_forward():
    norm = ObservationNormalizer((2,), clip=10.0)
    norm.update(torch.tensor([[0.0, 0.0], [2.0, 4.0]]))
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    out = norm(torch.tensor([[1.0, 2.0], [1e6, -1e6]]))
    torch.testing.assert_close(out[0], torch.zeros(2), atol=1e-3, rtol=0)
    assert out[1].tolist() == [10.0, -10.0]
    for k, v in norm.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed by forward()"


def test_reward_scaler_divides_by_std_of_discounted_return():
    gamma = 0.9
    scaler = RewardScaler(num_envs=1, gamma=gamma, clip=10.0)
    rewards, dones = [1.0, 2.0, 3.0, 4.0], [False, True, False, False]
    returns, ret = [], 0.0
    for r, d in zip(rewards, dones, strict=True):
        scaler.update(torch.tensor([r]), torch.tensor([d]))
        ret = ret * gamma + r
        returns.append(ret)
        if d:
            ret = 0.0  # a new episode's return starts from zero
    expected_std = np.sqrt(np.var(returns) + 1e-8)
    # With the 1e-4 pseudo-count the variance is slightly shrunk; compare at 1e-3.
    assert scaler(torch.tensor([2.0])).item() == pytest.approx(2.0 / expected_std, rel=1e-3)


def test_normalizer_state_round_trip():
    a, b = ObservationNormalizer((3,)), ObservationNormalizer((3,))
    a.update(torch.randn(100, 3) * 5 + 1)
    s1, s2 = RewardScaler(2, 0.99), RewardScaler(2, 0.99)
    s1.update(torch.tensor([1.0, 2.0]), torch.tensor([False, True]))
    b.load_state_dict(a.state_dict())
    s2.load_state_dict(s1.state_dict())
    x = torch.randn(4, 3)
    torch.testing.assert_close(a(x), b(x))
    torch.testing.assert_close(s1(torch.tensor([3.0, 4.0])), s2(torch.tensor([3.0, 4.0])))
    assert set(a.state_dict()) == {"rms.mean", "rms.var", "rms.count"}

"""Log-probs, entropies, modes and KLs against torch.distributions and float64 references."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.distributions as D

from pgkit.distributions import Categorical, MultiCategorical, Normal, TanhNormal, make_head
from pgkit.distributions.tanh_normal import tanh_log_det

torch.manual_seed(0)


def test_normal_matches_torch():
    mean, log_std = torch.randn(5, 3), torch.randn(5, 3) * 0.5
    x = torch.randn(5, 3)
    ours, ref = Normal(mean, log_std), D.Independent(D.Normal(mean, log_std.exp()), 1)
    torch.testing.assert_close(ours.log_prob(x), ref.log_prob(x))
    torch.testing.assert_close(ours.entropy(), ref.entropy())
    torch.testing.assert_close(ours.mode(), mean)
    other_mean, other_log_std = torch.randn(5, 3), torch.randn(5, 3) * 0.5
    other_ref = D.Independent(D.Normal(other_mean, other_log_std.exp()), 1)
    torch.testing.assert_close(ours.kl(Normal(other_mean, other_log_std)), D.kl_divergence(ref, other_ref))
    assert torch.all(ours.kl(Normal(mean, log_std)).abs() < 1e-6)


def test_normal_sample_statistics():
    mean, log_std = torch.tensor([[1.0, -2.0]]).expand(200_000, 2), torch.tensor([0.0, math.log(0.5)])
    samples = Normal(mean, log_std).sample()
    torch.testing.assert_close(samples.mean(0), torch.tensor([1.0, -2.0]), atol=0.01, rtol=0)
    torch.testing.assert_close(samples.std(0), torch.tensor([1.0, 0.5]), atol=0.01, rtol=0)


def test_tanh_normal_matches_torch_transformed_distribution():
    mean, log_std = torch.randn(6, 2), torch.randn(6, 2) * 0.3
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0])
    ours = TanhNormal(mean, log_std, low, high)
    loc, scale = (high + low) / 2, (high - low) / 2
    ref = D.TransformedDistribution(D.Normal(mean, log_std.exp()), [D.TanhTransform(), D.AffineTransform(loc, scale)])
    u = ours.sample()
    a = ours.to_env(u)
    # Moderate values, where torch's atanh-based inversion is still accurate.
    torch.testing.assert_close(ours.log_prob(u), ref.log_prob(a).sum(-1), atol=1e-4, rtol=1e-4)
    assert torch.all((a >= low) & (a <= high))
    torch.testing.assert_close(ours.to_env(ours.mode()), loc + scale * torch.tanh(mean))


@pytest.mark.parametrize("u", [3.0, 8.0, 12.0, 20.0, -15.0])
def test_tanh_normal_exact_near_bounds(u):
    """Far into the tails tanh(u) rounds to +-1 in float32; the stored pre-tanh sample keeps log_prob exact."""
    mean, log_std = torch.zeros(1, 1), torch.zeros(1, 1)
    dist = TanhNormal(mean, log_std, torch.tensor([-1.0]), torch.tensor([1.0]))
    got = dist.log_prob(torch.tensor([[u]])).item()
    # float64 reference: log N(u; 0, 1) - log(1 - tanh(u)^2), with 1 - tanh^2 = sech^2 = 4 / (e^u + e^-u)^2.
    u64 = np.float64(u)
    log_sech2 = math.log(4.0) - 2.0 * np.logaddexp(u64, -u64)
    expected = -0.5 * u64**2 - 0.5 * math.log(2 * math.pi) - log_sech2
    assert got == pytest.approx(expected, rel=1e-5)
    assert math.isfinite(got)


def test_tanh_log_det_stable_formula():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    torch.testing.assert_close(tanh_log_det(x), torch.log(1 - torch.tanh(x) ** 2))
    assert torch.isfinite(tanh_log_det(torch.tensor([50.0, -50.0]))).all()


def test_tanh_normal_entropy_estimate_and_kl():
    mean, log_std = torch.zeros(20_000, 1), torch.full((20_000, 1), -0.5)
    dist = TanhNormal(mean, log_std, torch.tensor([-1.0]), torch.tensor([1.0]))
    # Monte-Carlo reference for the entropy of tanh(N(0, e^-0.5)), from an independent estimate.
    ref = D.TransformedDistribution(D.Normal(0.0, math.exp(-0.5)), [D.TanhTransform()])
    x = ref.sample((200_000,))
    ref_entropy = -ref.log_prob(x.clamp(-0.999999, 0.999999)).mean()
    assert dist.entropy().mean().item() == pytest.approx(ref_entropy.item(), abs=0.02)
    other = TanhNormal(torch.ones(20_000, 1), log_std, torch.tensor([-1.0]), torch.tensor([1.0]))
    torch.testing.assert_close(dist.kl(other), Normal(mean, log_std).kl(Normal(torch.ones(20_000, 1), log_std)))


def test_categorical_matches_torch():
    logits = torch.randn(7, 4)
    ours, ref = Categorical(logits), D.Categorical(logits=logits)
    x = ref.sample()
    torch.testing.assert_close(ours.log_prob(x), ref.log_prob(x))
    torch.testing.assert_close(ours.entropy(), ref.entropy())
    torch.testing.assert_close(ours.mode(), logits.argmax(-1))
    other = torch.randn(7, 4)
    torch.testing.assert_close(ours.kl(Categorical(other)), D.kl_divergence(ref, D.Categorical(logits=other)))
    freq = torch.bincount(
        Categorical(torch.log(torch.tensor([[0.1, 0.2, 0.7]])).expand(100_000, 3)).sample(), minlength=3
    )
    torch.testing.assert_close(freq / 100_000.0, torch.tensor([0.1, 0.2, 0.7]), atol=0.01, rtol=0)


def test_multi_categorical_is_sum_of_parts():
    nvec = [3, 2, 4]
    logits = torch.randn(5, sum(nvec))
    ours = MultiCategorical(logits, nvec)
    refs = [D.Categorical(logits=x) for x in torch.split(logits, nvec, dim=-1)]
    x = ours.sample()
    assert x.shape == (5, 3)
    torch.testing.assert_close(ours.log_prob(x), sum(r.log_prob(x[:, i]) for i, r in enumerate(refs)))
    torch.testing.assert_close(ours.entropy(), sum(r.entropy() for r in refs))
    other_logits = torch.randn(5, sum(nvec))
    other = [D.Categorical(logits=x) for x in torch.split(other_logits, nvec, dim=-1)]
    expected = sum(D.kl_divergence(p, q) for p, q in zip(refs, other, strict=True))
    torch.testing.assert_close(ours.kl(MultiCategorical(other_logits, nvec)), expected)


def test_heads_follow_action_space():
    box = gym.spaces.Box(-2.0, 3.0, (2,))
    latent = torch.randn(4, 8)
    normal = make_head("normal", box, 8)(latent)
    assert isinstance(normal, Normal) and normal.mean.shape == (4, 2)
    sd = make_head("normal", box, 8, log_std_mode="state_dependent", log_std_init=-1.0)
    assert isinstance(sd(latent), Normal) and sd(latent).log_std.shape == (4, 2)
    tanh = make_head("tanh_normal", box, 8)(latent)
    a = tanh.to_env(tanh.sample())
    assert torch.all((a >= -2.0) & (a <= 3.0))
    multi = make_head("multi_categorical", gym.spaces.MultiDiscrete([3, 2]), 8)(latent)
    assert isinstance(multi, MultiCategorical) and multi.sample().shape == (4, 2)
    with pytest.raises(ValueError, match="cannot act"):
        make_head("normal", gym.spaces.Discrete(3), 8)


@pytest.mark.parametrize("family", ["normal", "tanh_normal", "categorical", "multi_categorical"])
def test_sample_with_log_prob_matches_log_prob_of_the_sample(family):
    torch.manual_seed(0)
    mean, log_std = torch.randn(64, 3), torch.randn(64, 3) * 0.5
    dist = {
        "normal": lambda: Normal(mean, log_std),
        "tanh_normal": lambda: TanhNormal(mean, log_std, -2 * torch.ones(3), 3 * torch.ones(3)),
        "categorical": lambda: Categorical(torch.randn(64, 5)),
        "multi_categorical": lambda: MultiCategorical(torch.randn(64, 7), [3, 4]),
    }[family]()
    raw, log_prob = dist.sample_with_log_prob()
    assert log_prob.shape == (64,)
    torch.testing.assert_close(log_prob, dist.log_prob(raw), atol=1e-5, rtol=1e-5)

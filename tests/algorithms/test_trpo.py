"""TRPO's pieces: conjugate gradient, the KL-bounded step, and exact restore on a rejected line search."""

import gymnasium as gym
import pytest
import torch

from pgkit.algorithms.trpo import conjugate_gradient, line_search, natural_gradient_step, surrogate
from pgkit.config import PolicyConfig
from pgkit.config_loading import ConfigError, load_config


def test_conjugate_gradient_solves_spd_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(12, 12, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(12, dtype=torch.float64)
    b = torch.randn(12, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iterations=50)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), atol=1e-8, rtol=1e-8)
    # Truncated CG still decreases the residual monotonically in the A-norm sense; 3 steps are already useful.
    x3 = conjugate_gradient(lambda v: a @ v, b, iterations=3)
    assert (a @ x3 - b).norm() < b.norm()


def _batch(seed: int, discrete: bool):
    torch.manual_seed(seed)
    obs_space = gym.spaces.Box(-1, 1, (4,))
    act_space = gym.spaces.Discrete(3) if discrete else gym.spaces.Box(-1, 1, (2,))
    policy = PolicyConfig(actor_hidden=(16,)).init(obs_space, act_space)
    obs = torch.randn(256, 4)
    with torch.no_grad():
        dist = policy.distribution(obs)
        actions = dist.sample()
        old_log_prob = dist.log_prob(actions)
    advantage = torch.randn(256)
    return policy, obs, actions, old_log_prob, advantage


@pytest.mark.parametrize("discrete", [False, True])
def test_accepted_steps_respect_the_kl_bound_and_improve(discrete):
    max_kl, accepted = 0.01, 0
    for seed in range(6):
        policy, obs, actions, old_log_prob, adv = _batch(seed, discrete)
        with torch.no_grad():
            old = policy.distribution(obs)
            before = float(surrogate(old.log_prob(actions), old_log_prob, adv))
        out = natural_gradient_step(
            policy.actor_parameters(),
            lambda p=policy, o=obs: p.distribution(o),
            actions,
            old_log_prob,
            adv,
            max_kl=max_kl,
            cg_iterations=15,
            cg_damping=0.1,
            shrink=0.8,
            max_backtracks=10,
        )
        with torch.no_grad():
            new = policy.distribution(obs)
            kl = float(old.kl(new).mean())
            after = float(surrogate(new.log_prob(actions), old_log_prob, adv))
        if out["accepted"]:
            accepted += 1
            assert kl <= max_kl
            assert after > before
            assert kl == pytest.approx(float(out["kl"]), rel=1e-5)
            assert 0 < float(out["step_fraction"]) <= 1
    assert accepted >= 4, "the natural-gradient step should usually be accepted on random problems"


def test_rejected_line_search_restores_parameters_bit_identically():
    policy, *_ = _batch(0, discrete=False)
    params = policy.actor_parameters()
    original = [p.detach().clone() for p in params]
    step = torch.randn(sum(p.numel() for p in params))
    tries = []

    def always_too_far():
        tries.append(1)
        return 1.0, 0.0  # KL above the bound every time

    fraction, kl, objective = line_search(params, step, always_too_far, 0.01, -1.0, 0.8, 10)
    assert (kl, objective) == (0.0, -1.0)
    assert fraction == 0.0 and len(tries) == 10
    for p, o in zip(params, original, strict=True):
        assert torch.equal(p, o)


def test_no_improvement_is_rejected_too():
    policy, *_ = _batch(1, discrete=True)
    params = policy.actor_parameters()
    original = [p.detach().clone() for p in params]
    fraction, _, _ = line_search(
        params, torch.ones(sum(p.numel() for p in params)), lambda: (0.0, 0.5), 0.01, 0.5, 0.8, 3
    )
    assert fraction == 0.0 and all(torch.equal(p, o) for p, o in zip(params, original, strict=True))


def test_trpo_rejects_shared_trunk():
    with pytest.raises(ConfigError, match=r"policy\.shared_trunk: TRPO trains the critic separately"):
        load_config(
            None, ["policy.shared_trunk=true"], base={"algorithm": {"name": "trpo"}, "env": {"id": "CartPole-v1"}}
        )


def test_delta_bounds_the_kl_of_the_joint_action_distribution():
    # pgkit's delta bounds the mean over states of KL summed over the 6 action dims (the paper's, OpenAI baselines'),
    # not sb3-contrib's mean over dims, which would let the joint KL reach 6 x delta.
    torch.manual_seed(3)
    policy = PolicyConfig(actor_hidden=(16,)).init(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Box(-1, 1, (6,)))
    obs = torch.randn(512, 4)
    with torch.no_grad():
        old = policy.distribution(obs)
        actions = old.sample()
        old_log_prob = old.log_prob(actions)
        mu0, s0 = old.mean.clone(), old.log_std.exp().clone()
    advantage = (actions * torch.linspace(-1, 1, 6)).sum(-1)  # a direction the policy can follow in every dim
    out = natural_gradient_step(policy.actor_parameters(), lambda: policy.distribution(obs), actions, old_log_prob,
                                advantage, max_kl=0.01, cg_iterations=15, cg_damping=0.1, shrink=0.8, max_backtracks=10)
    assert float(out["step_fraction"]) > 0.5
    with torch.no_grad():
        new = policy.distribution(obs)
        mu1, s1 = new.mean, new.log_std.exp()
    per_dim = torch.log(s1 / s0) + (s0**2 + (mu0 - mu1) ** 2) / (2 * s1**2) - 0.5  # closed form, float32
    joint = float(per_dim.sum(-1).mean())
    assert 0.004 < joint <= 0.01 + 1e-6
    assert float(per_dim.mean()) == pytest.approx(joint / 6, rel=1e-4)

"""V-trace: equal to TorchRL's ``vtrace_advantage_estimate`` with episode ends, and to the on-policy lambda-returns
where IMPALA says it must be; trainers that use it refresh it against the current policy every pass."""

from __future__ import annotations

import pytest
import torch
from torchrl.objectives.value.functional import vtrace_advantage_estimate

from pgkit.config_loading import load_config
from pgkit.ops import gae, vtrace

# TorchRL turns gamma and the clip thresholds into float32 tensors; values exact in float32 compare to 1e-12.
GAMMA = 0.9375


def _inputs(steps: int, envs: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    log_pi, log_mu, value, next_value, reward = (torch.randn(steps, envs, generator=g, dtype=dtype) for _ in range(5))
    terminated = torch.rand(steps, envs, generator=g) < 0.05
    truncated = (torch.rand(steps, envs, generator=g) < 0.05) & ~terminated
    return 0.5 * log_pi, 0.5 * log_mu, value, next_value, reward, terminated, truncated


@pytest.mark.parametrize(("steps", "envs"), [(7, 3), (300, 5), (2048, 1), (64, 64)])
@pytest.mark.parametrize(("rho_clip", "c_clip"), [(1.0, 1.0), (2.0, 0.5), (0.75, 1.5)])
def test_equals_torchrl(steps, envs, rho_clip, c_clip):
    log_pi, log_mu, value, next_value, reward, terminated, truncated = _inputs(steps, envs, steps + envs)

    def batch_first(x):  # TorchRL: [*batch, time, feature]
        return x.T.unsqueeze(-1)

    expected_adv, expected_target = vtrace_advantage_estimate(
        GAMMA, batch_first(log_pi), batch_first(log_mu), batch_first(value), batch_first(next_value),
        batch_first(reward), batch_first(terminated | truncated), batch_first(terminated), rho_thresh=rho_clip,
        c_thresh=c_clip,
    )
    adv, target = vtrace(log_pi - log_mu, reward, value, next_value, terminated, truncated, GAMMA, rho_clip, c_clip)
    torch.testing.assert_close(adv, expected_adv.squeeze(-1).T, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(target, expected_target.squeeze(-1).T, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("lam", [1.0, 0.9])
def test_on_policy_it_is_the_lambda_return(lam):
    """With pi = mu and c-bar >= 1, V-trace's targets are the lambda-returns (n-step returns for lambda 1) and its
    advantages GAE's: the same numbers pgkit's GAE gives."""
    _, _, value, final_value, reward, terminated, truncated = _inputs(200, 4, 3)
    # As in a rollout: the next step's value inside an episode, the final observation's after a truncation.
    next_value = torch.where(truncated, final_value, torch.cat([value[1:], final_value[-1:]]))
    zero = torch.zeros_like(value)
    adv, target = vtrace(zero, reward, value, next_value, terminated, truncated, GAMMA, 1.0, 1.5, lam)
    gae_adv, gae_return = gae(reward, value, next_value, terminated, truncated, GAMMA, lam)
    torch.testing.assert_close(target, gae_return)
    if lam == 1.0:
        torch.testing.assert_close(adv, gae_adv)
    # n-step return by hand for one env with no episode end: sum of discounted rewards plus the bootstrap.
    r, v, bootstrap = reward[:5, :1], value[:5, :1], final_value[4:5, :1]
    nv = torch.cat([v[1:], bootstrap])
    flags = torch.zeros(5, 1, dtype=torch.bool)
    _, n_step = vtrace(torch.zeros(5, 1, dtype=r.dtype), r, v, nv, flags, flags, GAMMA)
    by_hand = sum(GAMMA**k * r[k, 0] for k in range(5)) + GAMMA**5 * nv[4, 0]
    torch.testing.assert_close(n_step[0, 0], by_hand)


def test_importance_weights_are_clipped():
    """A very likely action under the current policy (rho = e^3) counts as rho-bar in the TD error."""
    reward = torch.tensor([[1.0]], dtype=torch.float64)
    value, next_value = torch.tensor([[0.5]], dtype=torch.float64), torch.tensor([[2.0]], dtype=torch.float64)
    flags = torch.zeros(1, 1, dtype=torch.bool)
    adv, target = vtrace(torch.full((1, 1), 3.0, dtype=torch.float64), reward, value, next_value, flags, flags,
                         0.5, rho_clip=1.5)
    assert target.item() == pytest.approx(0.5 + 1.5 * (1.0 + 0.5 * 2.0 - 0.5))
    assert adv.item() == pytest.approx(1.5 * (1.0 + 0.5 * 2.0 - 0.5))


def test_trainer_refreshes_vtrace_against_the_current_policy():
    """V-MPO's target network acts; with V-trace the targets are recomputed from the online policy's log-probs, and
    again after each pass over the batch."""
    cfg = load_config(None, ["logger.enabled=false", "eval.every_n_iterations=0", "env.id=CartPole-v1",
                             "env.num_envs=2", "algorithm.num_steps=32", "algorithm.num_minibatches=2",
                             "algorithm.update_epochs=2", "algorithm.advantage=vtrace", "trainer.total_timesteps=64",
                             "env.normalize_reward=false"], base={"algorithm": {"name": "ppo"}})
    module = cfg.init()
    module.setup("fit")
    try:
        module.collect_rollout()
        module.make_rows()
        with torch.no_grad():  # move the policy away from the one that acted
            for p in module.policy.parameters():
                p.add_(0.3 * torch.randn_like(p))
        module.refresh_vtrace()
        b = module.buffer
        with torch.no_grad():
            dist, value = module.policy(module.rows["obs"])
        log_rho = (dist.log_prob(module.rows["action"]) - module.rows["log_prob"]).view(32, 2)
        value = value.view(32, 2)
        next_value = module.next_values(b, value, module.last_value)
        a = cfg.algorithm
        adv, target = vtrace(log_rho, b["reward"], value, next_value, b["terminated"], b["truncated"], a.gamma,
                             a.vtrace_rho_clip, a.vtrace_c_clip, a.gae_lambda)
        torch.testing.assert_close(b["advantage"], adv)
        torch.testing.assert_close(module.rows["return"].view(32, 2), target)
        assert log_rho.abs().max() > 0.01
    finally:
        module.teardown("fit")

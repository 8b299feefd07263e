"""GAE with truncation and termination, by hand and through a real rollout."""

import pytest
import torch

from pgkit.config_loading import load_config
from pgkit.ops import gae

GAMMA, LAMBDA = 0.9, 0.8


def test_gae_by_hand_with_truncation_and_termination():
    # One env, 4 steps: step 1 is truncated (bootstrap from V(final obs) = 9), step 3 terminated (no bootstrap).
    reward = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    value = torch.tensor([[0.5], [0.6], [0.7], [0.8]])
    next_value = torch.tensor([[0.6], [9.0], [0.8], [5.0]])
    terminated = torch.tensor([[False], [False], [False], [True]])
    truncated = torch.tensor([[False], [True], [False], [False]])
    adv, ret = gae(reward, value, next_value, terminated, truncated, GAMMA, LAMBDA)
    a3 = 4 - 0.8  # terminated: the 5.0 must be ignored
    a2 = (3 + GAMMA * 0.8 - 0.7) + GAMMA * LAMBDA * a3
    a1 = 2 + GAMMA * 9.0 - 0.6  # truncated: bootstraps, and the trace is cut
    a0 = (1 + GAMMA * 0.6 - 0.5) + GAMMA * LAMBDA * a1
    torch.testing.assert_close(adv.squeeze(1), torch.tensor([a0, a1, a2, a3]))
    torch.testing.assert_close(ret, adv + value)


def test_gae_envs_are_independent():
    torch.manual_seed(0)
    r, v, nv = torch.randn(6, 3), torch.randn(6, 3), torch.randn(6, 3)
    term, trunc = torch.rand(6, 3) < 0.2, torch.rand(6, 3) < 0.2
    adv, _ = gae(r, v, nv, term, trunc, GAMMA, LAMBDA)
    for i in range(3):
        col, _ = gae(
            r[:, i : i + 1], v[:, i : i + 1], nv[:, i : i + 1], term[:, i : i + 1], trunc[:, i : i + 1], GAMMA, LAMBDA
        )
        torch.testing.assert_close(adv[:, i : i + 1], col)


def _rollout(env_id: str, max_episode_steps: int | None):
    overrides = [
        f"env.id={env_id}",
        "env.num_envs=1",
        "env.normalize_obs=false",
        "env.normalize_reward=false",
        "algorithm.num_steps=6",
        "algorithm.num_minibatches=1",
        f"algorithm.gamma={GAMMA}",
        f"algorithm.gae_lambda={LAMBDA}",
        "trainer.total_timesteps=6",
    ]
    if max_episode_steps:
        overrides.append(f"env.max_episode_steps={max_episode_steps}")
    module = load_config(None, overrides, base={"algorithm": {"name": "ppo"}}).init()
    module.setup("fit")
    module.collect_rollout()
    module.teardown("fit")
    value = lambda x: module.policy.value(torch.tensor([[float(x)]])).item()  # noqa: E731
    return module.buffer, value


def test_truncated_episode_bootstraps_from_real_final_observation():
    buf, value = _rollout("envs_for_tests:CounterEnv", max_episode_steps=3)
    assert buf["truncated"][:, 0].tolist() == [False, False, True, False, False, True]
    assert not buf["terminated"].any()
    # Observations seen: 0 1 2 | 0 1 2 (reset after the truncation at step 3).
    assert buf["obs"][:, 0, 0].tolist() == [0, 1, 2, 0, 1, 2]
    final = value(3)  # the real final observation, never seen as an input obs
    assert buf["final_value"][2, 0].item() == pytest.approx(final, abs=1e-6)
    assert final != pytest.approx(value(0), abs=1e-6)
    expected_a2 = 1.0 + GAMMA * final - value(2)
    assert buf["advantage"][2, 0].item() == pytest.approx(expected_a2, abs=1e-5)


def test_terminated_episode_does_not_bootstrap():
    buf, value = _rollout("envs_for_tests:TerminatingCounterEnv", max_episode_steps=None)
    assert buf["terminated"][:, 0].tolist() == [False, False, True, False, False, True]
    assert buf["advantage"][2, 0].item() == pytest.approx(1.0 - value(2), abs=1e-5)
    # Step 1 bootstraps from the next step's value inside the episode.
    a2 = 1.0 - value(2)
    expected_a1 = (1.0 + GAMMA * value(2) - value(1)) + GAMMA * LAMBDA * a2
    assert buf["advantage"][1, 0].item() == pytest.approx(expected_a1, abs=1e-5)

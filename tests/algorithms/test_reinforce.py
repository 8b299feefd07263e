"""REINFORCE's Monte-Carlo returns, masks for unfinished episodes, and loss, by hand."""

import pytest
import torch

from pgkit.algorithms.reinforce import complete_episode_mask, reinforce_loss, reward_to_go
from pgkit.config_loading import ConfigError, load_config

GAMMA = 0.9


def test_reward_to_go_and_mask_by_hand():
    # One env: an episode terminates at t=2, one is truncated at t=4 (bootstrap 10), t=5..6 is an unfinished tail.
    reward = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]).unsqueeze(1)
    terminated = torch.tensor([0, 0, 1, 0, 0, 0, 0]).bool().unsqueeze(1)
    truncated = torch.tensor([0, 0, 0, 0, 1, 0, 0]).bool().unsqueeze(1)
    bootstrap = torch.tensor([0, 0, 0, 0, 10.0, 0, 0]).unsqueeze(1)
    g = reward_to_go(reward, terminated, truncated, bootstrap, GAMMA).squeeze(1)
    expected = [
        1 + GAMMA * 2 + GAMMA**2 * 3,
        2 + GAMMA * 3,
        3.0,
        4 + GAMMA * (5 + GAMMA * 10),
        5 + GAMMA * 10,
        6 + GAMMA * 7,
        7.0,
    ]
    torch.testing.assert_close(g, torch.tensor(expected))
    assert complete_episode_mask(terminated | truncated).squeeze(1).tolist() == [1, 1, 1, 1, 1, 0, 0]


def test_reinforce_loss_masks_steps():
    log_prob = torch.tensor([-1.0, -2.0, -3.0])
    weight = torch.tensor([1.0, 2.0, 100.0])
    mask = torch.tensor([1.0, 1.0, 0.0])
    out = reinforce_loss(log_prob, weight, mask, torch.tensor([0.5, 1.5, 9.0]))
    assert out["loss_policy"].item() == pytest.approx((1.0 + 4.0) / 2)
    assert out["loss_entropy"].item() == pytest.approx(-1.0)


def test_rollout_drops_the_unfinished_tail():
    overrides = [
        "env.id=envs_for_tests:TerminatingCounterEnv",
        "env.normalize_obs=false",
        "env.normalize_reward=false",
        "algorithm.num_steps=7",
        f"algorithm.gamma={GAMMA}",
        "algorithm.baseline=none",
        "trainer.total_timesteps=7",
    ]
    module = load_config(None, overrides, base={"algorithm": {"name": "reinforce"}}).init()
    module.setup("fit")
    module.collect_rollout()
    module.teardown("fit")
    b = module.buffer
    assert b["mask"][:, 0].tolist() == [1, 1, 1, 1, 1, 1, 0]
    torch.testing.assert_close(b["return"][:3, 0], torch.tensor([1 + GAMMA + GAMMA**2, 1 + GAMMA, 1.0]))


def test_bootstrap_needs_a_value_baseline():
    with pytest.raises(ConfigError, match=r"algorithm\.partial_episodes: 'bootstrap' needs baseline: value"):
        load_config(
            None,
            ["algorithm.partial_episodes=bootstrap", "algorithm.baseline=mean"],
            base={"algorithm": {"name": "reinforce"}, "env": {"id": "CartPole-v1"}},
        )


def test_first_episode_mask_by_hand():
    from pgkit.algorithms.reinforce import first_episode_mask

    # env 0 ends at t=1 and again at t=3; env 1 ends at t=2; env 2 never ends (too long: dropped).
    done = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0]]).bool()
    mask = first_episode_mask(done, length=6)
    assert mask.T.tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]]


def test_episode_batches_hold_one_complete_episode_per_env_and_stop_early():
    overrides = [
        "env.id=envs_for_tests:TerminatingCounterEnv",
        "env.num_envs=2",
        "env.normalize_obs=false",
        "env.normalize_reward=false",
        "algorithm.num_steps=10",
        "algorithm.batch=episodes",
        f"algorithm.gamma={GAMMA}",
        "algorithm.baseline=none",
        "trainer.total_timesteps=20",
    ]
    module = load_config(None, overrides, base={"algorithm": {"name": "reinforce"}}).init()
    module.setup("fit")
    for _ in range(2):  # the second batch restarts the episodes
        module.collect_rollout()
        b = module.buffer
        assert module.steps_taken == 3
        assert b["obs"][:3, :, 0].T.tolist() == [[0, 1, 2], [0, 1, 2]]
        assert b["mask"].T.tolist() == [[1, 1, 1] + [0] * 7] * 2
        torch.testing.assert_close(b["return"][:3, 0], torch.tensor([1 + GAMMA + GAMMA**2, 1 + GAMMA, 1.0]))
    module.teardown("fit")

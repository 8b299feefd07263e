"""Memory and structure learn: PPO on the built-in envs, recurrent PPO where memory is needed (and feedforward PPO
failing there), a CNN on images, a Dict of an image and a vector, V-trace. Fixed seeds, small budgets, thresholds
on deterministic evaluation returns of the final policy (and on training returns where they say more)."""

from __future__ import annotations

import numpy as np
import pytest
from paths import CONFIGS

from pgkit.config_loading import load_config
from pgkit.evaluation import evaluate, restore_agent
from pgkit.training import fit

pytestmark = [pytest.mark.slow, pytest.mark.learning]

QUIET = ["logger.enabled=false", "eval.every_n_iterations=0"]
SMALL_PPO = ["env.num_envs=8", "algorithm.num_steps=128", "algorithm.num_minibatches=4", "algorithm.update_epochs=4",
             "algorithm.learning_rate=1e-3", "algorithm.ent_coef=0.01", "env.normalize_reward=false"]
SMALL_CNN = "policy.encoder={cnn_channels: [16, 32], cnn_kernels: [3, 3], cnn_strides: [1, 1], cnn_features: 128}"


def train_and_evaluate(overrides: list[str], episodes: int = 100, config: str | None = None) -> tuple[list, float]:
    cfg = load_config(CONFIGS / config if config else None, [*overrides, *QUIET], base={"algorithm": {"name": "ppo"}})
    result = fit(cfg)
    agent, cfg, seed = restore_agent(result.last_checkpoint)
    env = cfg.env
    evaluation = evaluate(agent, env.id, episodes, True, seed, env.kwargs, env.max_episode_steps)
    return result.episode_returns, evaluation.mean_return


def test_ppo_solves_bandit():
    returns, evaluated = train_and_evaluate(["env.id=pgkit/Bandit-v0", "env.num_envs=8", "algorithm.num_steps=32",
                                             "algorithm.num_minibatches=4", "algorithm.update_epochs=4",
                                             "algorithm.learning_rate=1e-3", "env.normalize_reward=false",
                                             "trainer.total_timesteps=20000"], episodes=400)
    # The best arm pays 0.9, the next best 0.57, a random choice 0.45 on average.
    assert evaluated >= 0.85 and np.mean(returns[-500:]) >= 0.8


def test_ppo_solves_squared():
    returns, evaluated = train_and_evaluate(["env.id=pgkit/Squared-v0", *SMALL_PPO, "trainer.total_timesteps=60000"])
    assert evaluated >= 0.95 and np.mean(returns[-100:]) >= 0.9  # a random walk reaches 7% of the targets


def test_cnn_learns_an_image_task():
    _, evaluated = train_and_evaluate(["env.id=pgkit/Squared-v0", "env.kwargs={observation: image}", *SMALL_PPO,
                                       SMALL_CNN, "trainer.total_timesteps=60000"])
    assert evaluated >= 0.95


def test_dict_of_image_and_vector_learns():
    # Neither key alone says where to go: the target is only in the image, the agent only in the vector.
    _, evaluated = train_and_evaluate([
        "env.id=pgkit/Squared-v0", "env.kwargs={observation: dict}", *SMALL_PPO, "policy.activation=relu",
        "policy.encoder={cnn_channels: [16], cnn_kernels: [3], cnn_strides: [1], cnn_features: 64}",
        "trainer.total_timesteps=60000",
    ])
    assert evaluated >= 0.95


MEMORY = ["env.id=pgkit/Memory-v0", "env.kwargs={length: 4}", "env.num_envs=16", "algorithm.num_steps=32",
          "algorithm.num_minibatches=4", "algorithm.update_epochs=8", "algorithm.learning_rate=2e-3",
          "algorithm.ent_coef=0.01", "env.normalize_obs=false", "env.normalize_reward=false",
          "policy.actor_hidden=[64]", "policy.critic_hidden=[64]"]


def test_recurrent_ppo_solves_memory_and_feedforward_ppo_cannot():
    # 4 binary symbols to recall: 4 is perfect, 2 is chance.
    _, recurrent = train_and_evaluate([*MEMORY, "policy.recurrent={hidden_size: 128}",
                                       "trainer.total_timesteps=150000"])
    assert recurrent >= 3.8
    _, feedforward = train_and_evaluate([*MEMORY, "trainer.total_timesteps=60000"])
    assert feedforward <= 2.3


def test_recurrent_ppo_solves_cartpole_without_velocities():
    returns, evaluated = train_and_evaluate([], episodes=10, config="ppo-lstm.yaml")
    assert evaluated >= 450 and np.mean(returns[-20:]) >= 400
    _, feedforward = train_and_evaluate(["policy.recurrent=null", "trainer.total_timesteps=40000"], episodes=10,
                                        config="ppo-lstm.yaml")
    assert feedforward < 150


def test_ppo_with_vtrace_learns_cartpole():
    returns, evaluated = train_and_evaluate(["algorithm.advantage=vtrace", "algorithm.vtrace_rho_clip=1.0",
                                             "algorithm.vtrace_c_clip=1.0"], episodes=10,
                                            config="ppo-cartpole.yaml")
    assert evaluated >= 450 and np.mean(returns[-20:]) >= 400

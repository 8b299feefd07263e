"""The Python API in SB3's shape: pgkit.fit from a path, a mapping or a config with overrides; pgkit.load(ckpt)
.predict(obs) with single observations and batches, recurrent state, and no global side effects."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from paths import ROOT

import pgkit
from pgkit.errors import ConfigError

QUIET = {"logger.enabled": False, "eval.every_n_iterations": 0}


@pytest.mark.slow
def test_fit_from_a_path_with_overrides_then_predict_single_and_batch():
    result = pgkit.fit(ROOT / "configs" / "ppo-cartpole.yaml",
                       overrides={"trainer.total_timesteps": 80_000, "trainer.output_dir": "run", **QUIET})
    assert 79_000 < result.env_steps <= 80_000 and result.last_checkpoint.exists()  # whole iterations
    agent = pgkit.load(result.last_checkpoint)
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=3)
    action, state = agent.predict(obs)  # one observation, one action
    assert state is None and np.ndim(action) == 0 and env.action_space.contains(int(action))
    batch = np.stack([env.observation_space.sample() for _ in range(5)])
    actions, _ = agent.predict(batch)
    assert actions.shape == (5,)
    # Deterministic predictions equal the module's own greedy actions (normalisation inside the agent).
    expected, _ = agent.module.act(batch, True)
    np.testing.assert_array_equal(actions, expected)
    # The policy learned: greedy episodes last far beyond random ones (about 20 steps). Over 10 episodes, because
    # one episode of a policy this young varies widely (at 60k steps one run gave 113 to 152, another 500).
    totals = []
    for seed in range(3, 13):
        obs, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(int(agent.predict(obs)[0]))
            total, done = total + reward, terminated or truncated
        totals.append(total)
    assert np.mean(totals) >= 200, totals


@pytest.mark.slow
def test_stop_at_return_ends_the_run_at_the_first_iteration_reaching_it(tmp_path):
    from pgkit.bench import time_to_score

    started = time.perf_counter()
    # Evaluation only every 1000 iterations: the last iteration is evaluated anyway, so best.ckpt exists only if
    # the stop made its iteration the last.
    result = pgkit.fit(ROOT / "configs" / "ppo-cartpole.yaml",
                       overrides={"trainer.stop_at_return": 100, "trainer.output_dir": str(tmp_path / "run"), **QUIET,
                                  "eval.every_n_iterations": 1000, "eval.episodes": 2})
    elapsed = time.perf_counter() - started
    returns, seconds, steps = result.episode_returns, result.episode_seconds, result.episode_steps
    assert len(returns) == len(seconds) == len(steps) >= 100
    assert result.env_steps < 100_000  # the config's budget; random play returns about 22
    assert np.mean(returns[-100:]) >= 100
    # It stopped at the first iteration whose last 100 episodes reached 100: that is the last iteration.
    assert time_to_score(returns, seconds, 100) == seconds[-1]
    earlier = [r for r, s in zip(returns, steps, strict=True) if s < result.env_steps]
    assert len(earlier) < 100 or np.mean(earlier[-100:]) < 100
    # Times: from the call to fit, in order, one per rollout.
    assert 0 < seconds[0] <= seconds[-1] < elapsed and np.all(np.diff(seconds) >= 0)
    assert len(set(seconds)) == len(set(steps))
    # The run ended as a finished one: its last iteration was evaluated, and its last checkpoint holds the final
    # step count.
    assert result.best_checkpoint is not None and result.best_checkpoint.exists()
    assert int(pgkit.load(result.last_checkpoint).module.env_steps) == result.env_steps


def test_fit_from_a_mapping_and_from_a_config_object():
    from pgkit.config_loading import load_config

    mapping = {"algorithm": {"name": "a2c", "num_steps": 8}, "env": {"id": "CartPole-v1"},
               "trainer": {"total_timesteps": 64, "output_dir": "a"}}
    assert pgkit.fit(mapping, overrides=QUIET).env_steps == 64
    cfg = load_config(None, [], base={**mapping, "trainer": {"total_timesteps": 32, "output_dir": "b"}})
    result = pgkit.fit(cfg, overrides=["logger.enabled=false", "trainer.total_timesteps=48"])
    assert result.env_steps == 48 and result.output_dir == Path("b")


def test_fit_raises_the_cli_s_config_error():
    with pytest.raises(ConfigError, match=r"config error: trainer\.sed: unknown key; did you mean 'seed'"):
        pgkit.fit({"algorithm": {"name": "ppo"}, "env": {"id": "CartPole-v1"}}, overrides={"trainer.sed": 3})


@pytest.mark.slow
def test_fit_leaves_no_global_side_effects():
    import mlflow

    mlflow.set_tracking_uri("sqlite:///callers.db")  # the caller's own MLflow setting (set before the seeds)
    torch.set_num_threads(2)
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    seed_env = os.environ.get("PL_GLOBAL_SEED")
    pgkit.fit({"algorithm": {"name": "ppo", "num_steps": 32, "num_minibatches": 2}, "env": {"id": "CartPole-v1"},
               "trainer": {"total_timesteps": 64, "torch_threads": 1, "seed": 9, "output_dir": "r"},
               "logger": {"tracking_uri": f"sqlite:///{Path.cwd() / 'run.db'}", "log_model": False}},
              overrides={"eval.every_n_iterations": 0})
    assert torch.get_num_threads() == 2
    assert os.environ.get("PL_GLOBAL_SEED") == seed_env
    assert mlflow.get_tracking_uri() == "sqlite:///callers.db"  # the caller's, not the run's
    torch.testing.assert_close(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_predict_carries_recurrent_state_and_resets_it_at_episode_starts():
    result = pgkit.fit({"algorithm": {"name": "ppo", "num_steps": 32, "num_minibatches": 2},
                        "env": {"id": "CartPole-v1", "num_envs": 2},
                        "policy": {"recurrent": {"kind": "gru", "hidden_size": 8}},
                        "trainer": {"total_timesteps": 64, "output_dir": "r"}}, overrides=QUIET)
    agent = pgkit.load(result.last_checkpoint)
    obs = np.array([0.01, 0.2, -0.03, 0.1], np.float32)
    _, state = agent.predict(obs)
    assert state is not None and state.shape[0] == 1
    _, state2 = agent.predict(obs, state=state)
    assert not torch.equal(state2, state)  # the state moved on
    _, fresh = agent.predict(obs, state=state2, episode_start=True)
    torch.testing.assert_close(fresh, state)  # reset, then one step from the same observation
    batch = np.stack([obs, obs, obs])
    actions, batch_state = agent.predict(batch, state=None, episode_start=np.array([True, False, True]))
    assert actions.shape == (3,) and batch_state.shape[0] == 3


@pytest.mark.slow
def test_fit_takes_lightning_callbacks_that_see_each_iteration():
    import lightning as L
    from lightning.pytorch.callbacks import Checkpoint

    import pgkit

    class Seen(L.Callback):
        def __init__(self) -> None:
            self.metrics: list[dict] = []

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.metrics.append(dict(pl_module.last_metrics))

    class SeenAfter(Seen, Checkpoint):  # Lightning runs Checkpoint subclasses after the module's own epoch end
        pass

    before, after = Seen(), SeenAfter()
    result = pgkit.fit({"algorithm": {"name": "ppo", "num_steps": 64, "num_minibatches": 2, "update_epochs": 1},
                        "env": {"id": "CartPole-v1", "num_envs": 4}, "trainer": {"total_timesteps": 768},
                        "eval": {"every_n_iterations": 3, "episodes": 2}, "logger": {"enabled": False}},
                       callbacks=[before, after])
    assert result.env_steps == 768 and len(before.metrics) == len(after.metrics) == 3
    # A Checkpoint subclass sees the iteration just finished, its evaluation included; a plain callback's epoch end
    # comes before the module's, when last_metrics still holds the previous iteration's.
    assert "eval/mean_return" in after.metrics[-1] and "eval/mean_return" not in after.metrics[0]
    assert before.metrics[1:] == after.metrics[:-1] and before.metrics[0] == {}

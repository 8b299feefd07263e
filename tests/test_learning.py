"""PPO learns: fixed seeds, small budgets, return thresholds that fail honestly if the algorithm breaks."""

from pathlib import Path

import numpy as np
import pytest

from pgkit.config_loading import load_config
from pgkit.training import fit

CONFIGS = Path(__file__).parent.parent / "configs"
QUIET = ["logger.enabled=false", "eval.every_n_iterations=0"]

pytestmark = pytest.mark.learning


def test_ppo_cartpole_reaches_450():
    # configs/ppo-cartpole.yaml as shipped: 100k steps, about 30 s.
    result = fit(load_config(CONFIGS / "ppo-cartpole.yaml", QUIET))
    last20 = float(np.mean(result.episode_returns[-20:]))
    assert last20 >= 450, f"mean return of the last 20 episodes {last20:.1f} < 450"


def test_ppo_inverted_pendulum_improves():
    # The MuJoCo config on InvertedPendulum-v5, 20 iterations of 1024 steps: a random policy scores about 5-30.
    overrides = ["env.id=InvertedPendulum-v5", "algorithm.num_steps=1024", "trainer.total_timesteps=20480", *QUIET]
    result = fit(load_config(CONFIGS / "ppo.yaml", overrides))
    first20 = float(np.mean(result.episode_returns[:20]))
    last20 = float(np.mean(result.episode_returns[-20:]))
    assert first20 < 60, f"the first episodes should be near random, got {first20:.1f}"
    assert last20 >= 200, f"mean return of the last 20 episodes {last20:.1f} < 200"


def test_a2c_cartpole_reaches_195():
    # configs/a2c-cartpole.yaml as shipped: 200k steps, 5000 RMSprop updates, about 30 s.
    result = fit(load_config(CONFIGS / "a2c-cartpole.yaml", QUIET))
    last20 = float(np.mean(result.episode_returns[-20:]))
    assert last20 >= 195, f"mean return of the last 20 episodes {last20:.1f} < 195"


def test_trpo_cartpole_reaches_400():
    # sb3-contrib defaults, 4 envs x 512 steps, 100k steps, about 20 s.
    overrides = [
        "env.id=CartPole-v1",
        "env.num_envs=4",
        "env.normalize_obs=false",
        "env.normalize_reward=false",
        "algorithm.num_steps=512",
        "trainer.total_timesteps=100000",
        *QUIET,
    ]
    result = fit(load_config(None, overrides, base={"algorithm": {"name": "trpo"}}))
    last20 = float(np.mean(result.episode_returns[-20:]))
    assert last20 >= 400, f"mean return of the last 20 episodes {last20:.1f} < 400"


def test_trpo_inverted_pendulum_improves():
    # sb3-contrib defaults with 1024-step rollouts, 30 iterations; a random policy scores about 5-30.
    overrides = ["env.id=InvertedPendulum-v5", "algorithm.num_steps=1024", "trainer.total_timesteps=30720", *QUIET]
    result = fit(load_config(None, overrides, base={"algorithm": {"name": "trpo"}}))
    first20, last20 = (float(np.mean(x)) for x in (result.episode_returns[:20], result.episode_returns[-20:]))
    assert first20 < 60 and last20 >= 200, f"first 20 episodes {first20:.1f}, last 20 {last20:.1f}"


def test_reinforce_cartpole_reaches_195():
    # configs/reinforce-cartpole.yaml as shipped: value baseline, 125 updates of 1600 steps, about 15 s.
    result = fit(load_config(CONFIGS / "reinforce-cartpole.yaml", QUIET))
    last20 = float(np.mean(result.episode_returns[-20:]))
    assert last20 >= 195, f"mean return of the last 20 episodes {last20:.1f} < 195"


def test_vmpo_cartpole_reaches_400():
    # 8 envs x 128 steps, 4 x 4 updates per rollout, lr 1e-3, eps_eta 0.1 (sharper E-step weights than the
    # paper's 0.01, which learns CartPole too slowly for a one-minute test); 100k steps, about 15 s.
    overrides = [
        "env.id=CartPole-v1",
        "env.num_envs=8",
        "env.normalize_obs=false",
        "env.normalize_reward=false",
        "algorithm.num_steps=128",
        "algorithm.update_epochs=4",
        "algorithm.num_minibatches=4",
        "algorithm.learning_rate=1e-3",
        "algorithm.epsilon_temperature=0.1",
        "trainer.total_timesteps=100000",
        *QUIET,
    ]
    result = fit(load_config(None, overrides, base={"algorithm": {"name": "vmpo"}}))
    last20 = float(np.mean(result.episode_returns[-20:]))
    assert last20 >= 400, f"mean return of the last 20 episodes {last20:.1f} < 400"


def test_vmpo_inverted_pendulum_improves():
    # The paper's duals; 1024-step rollouts, 10 x 8 updates each, 30 iterations.
    overrides = [
        "env.id=InvertedPendulum-v5",
        "algorithm.num_steps=1024",
        "algorithm.num_minibatches=8",
        "trainer.total_timesteps=30720",
        *QUIET,
    ]
    result = fit(load_config(None, overrides, base={"algorithm": {"name": "vmpo"}}))
    first20, last20 = (float(np.mean(x)) for x in (result.episode_returns[:20], result.episode_returns[-20:]))
    assert first20 < 60 and last20 >= 200, f"first 20 episodes {first20:.1f}, last 20 {last20:.1f}"

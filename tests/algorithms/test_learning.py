"""Every algorithm learns: fixed seeds, small budgets, return thresholds that fail honestly if an algorithm breaks.

Thresholds are on the mean return of the last 20 training episodes. Each run takes 15-45 s on 2 CPU cores.
"""


import numpy as np
import pytest
from paths import CONFIGS

from pgkit.config_loading import load_config
from pgkit.training import fit

QUIET = ["logger.enabled=false", "eval.every_n_iterations=0"]
CARTPOLE = ["env.id=CartPole-v1", "env.normalize_obs=false", "env.normalize_reward=false"]

pytestmark = [pytest.mark.slow, pytest.mark.learning]


def train(algorithm: str, config_file: str | None, overrides: list[str]) -> list[float]:
    path = CONFIGS / config_file if config_file else None
    base = None if path else {"algorithm": {"name": algorithm}}
    cfg = load_config(path, [*overrides, *QUIET], base=base)
    assert cfg.algorithm.name == algorithm
    return fit(cfg).episode_returns


@pytest.mark.parametrize(
    ("algorithm", "config_file", "overrides", "threshold"),
    [
        # The shipped CartPole examples: 100k-200k steps.
        ("ppo", "ppo-cartpole.yaml", [], 450),
        ("a2c", "a2c-cartpole.yaml", [], 195),
        ("reinforce", "reinforce-cartpole.yaml", [], 195),
        # Batches of complete episodes, one per sub-env, restarted every batch.
        ("reinforce", "reinforce-cartpole.yaml", ["algorithm.batch=episodes", "algorithm.num_steps=500"], 195),
        # GRPO and GSPO presets: groups of 8 episodes from shared start states, no critic, 200k steps.
        ("grpo", "grpo.yaml", [], 400),
        ("grpo", "gspo.yaml", [], 400),
        # sb3-contrib's TRPO defaults with 4 envs x 512 steps, 100k steps.
        ("trpo", None, [*CARTPOLE, "env.num_envs=4", "algorithm.num_steps=512", "trainer.total_timesteps=100000"], 400),
        # V-MPO with 8 envs x 128 steps, 4 x 4 updates, lr 1e-3 and eps_eta 0.1 (sharper E-step weights than the
        # paper's 0.01, which learns CartPole too slowly for a test), 100k steps.
        (
            "vmpo",
            None,
            [
                *CARTPOLE,
                "env.num_envs=8",
                "algorithm.num_steps=128",
                "algorithm.update_epochs=4",
                "algorithm.num_minibatches=4",
                "algorithm.learning_rate=1e-3",
                "algorithm.epsilon_temperature=0.1",
                "trainer.total_timesteps=100000",
            ],
            400,
        ),
    ],
)
def test_cartpole(algorithm, config_file, overrides, threshold):
    returns = train(algorithm, config_file, overrides)
    last20 = float(np.mean(returns[-20:]))
    assert last20 >= threshold, f"{algorithm}: mean return of the last 20 episodes {last20:.1f} < {threshold}"


@pytest.mark.parametrize(
    ("algorithm", "config_file", "overrides"),
    [
        # The MuJoCo PPO config, 20 iterations of 1024 steps.
        ("ppo", "ppo.yaml", ["algorithm.num_steps=1024", "trainer.total_timesteps=20480"]),
        # Algorithm defaults with 1024-step rollouts, 30 iterations.
        ("trpo", None, ["algorithm.num_steps=1024", "trainer.total_timesteps=30720"]),
        ("vmpo", None, ["algorithm.num_steps=1024", "algorithm.num_minibatches=8", "trainer.total_timesteps=30720"]),
    ],
)
def test_inverted_pendulum_improves(algorithm, config_file, overrides):
    # A random policy scores about 5-30 on InvertedPendulum-v5; 200 is far beyond chance.
    returns = train(algorithm, config_file, ["env.id=InvertedPendulum-v5", *overrides])
    first20, last20 = float(np.mean(returns[:20])), float(np.mean(returns[-20:]))
    assert first20 < 60, f"{algorithm}: the first episodes should be near random, got {first20:.1f}"
    assert last20 >= 200, f"{algorithm}: mean return of the last 20 episodes {last20:.1f} < 200"


def test_ppo_fast_config_solves_inverted_pendulum():
    # configs/ppo-fast.yaml (the config benchmarks/time_to_score.py measures on HalfCheetah, Hopper and Walker2d)
    # with only env.id changed: the deterministic evaluation must reach 900 of 1000 within 50k steps.
    from pgkit.evaluation import EVAL_SEED_OFFSET, evaluate, restore_agent

    cfg = load_config(CONFIGS / "ppo-fast.yaml", ["env.id=InvertedPendulum-v5", "trainer.total_timesteps=50000",
                                                  *QUIET])
    result = fit(cfg)
    module, _, _ = restore_agent(result.last_checkpoint)
    score = evaluate(module, "InvertedPendulum-v5", 10, True, cfg.trainer.seed + EVAL_SEED_OFFSET)
    assert score.mean_return >= 900, score


def test_a2c_mujoco_config_solves_inverted_pendulum():
    # configs/a2c.yaml with only env.id changed, 100k steps: the deterministic evaluation must reach 900 of 1000
    # (SB3's A2C defaults reach 1000 there; the RL Zoo-style config this replaced evaluated to 93).
    from pgkit.evaluation import EVAL_SEED_OFFSET, evaluate, restore_agent

    cfg = load_config(CONFIGS / "a2c.yaml", ["env.id=InvertedPendulum-v5", "trainer.total_timesteps=100000", *QUIET])
    result = fit(cfg)
    module, _, _ = restore_agent(result.last_checkpoint)
    score = evaluate(module, "InvertedPendulum-v5", 10, True, cfg.trainer.seed + EVAL_SEED_OFFSET)
    assert score.mean_return >= 900, score

"""pgkit's built-in environments: registered on import, gymnasium's env checker, seeding, vectorisation, and the
optimal returns their docstrings document."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import pgkit

VARIANTS = [
    ("pgkit/Bandit-v0", {}),
    ("pgkit/Bandit-v0", {"num_arms": 3, "best_probability": 1.0}),
    ("pgkit/Squared-v0", {}),
    ("pgkit/Squared-v0", {"observation": "image", "size": 5}),
    ("pgkit/Squared-v0", {"observation": "dict"}),
    ("pgkit/Squared-v0", {"observation": "discrete"}),
    ("pgkit/Memory-v0", {}),
    ("pgkit/Memory-v0", {"length": 9, "num_symbols": 5}),
    ("pgkit/CartPoleNoVel-v1", {}),
    ("pgkit/PendulumNoVel-v1", {}),
]


@pytest.mark.parametrize(("env_id", "kwargs"), VARIANTS)
def test_env_checker_seeding_and_vectorisation(env_id, kwargs):
    assert env_id in gym.registry and env_id in pgkit.BUILTIN_ENVS
    env = gym.make(env_id, **kwargs)
    if "NoVel" not in env_id:  # the no-velocity ones wrap gymnasium's own envs
        check_env(env.unwrapped, skip_render_check=True)
    envs = gym.make_vec(env_id, num_envs=3, vectorization_mode="sync", **kwargs)
    try:
        runs = []
        for _ in range(2):
            obs, _ = envs.reset(seed=11)
            envs.action_space.seed(11)
            trace = [gym.vector.utils.batch_space(envs.single_observation_space, 3).contains(obs)]
            for _ in range(25):
                obs, reward, terminated, truncated, _ = envs.step(envs.action_space.sample())
                trace.append((np.asarray(reward).tolist(), terminated.tolist(), truncated.tolist()))
            runs.append(trace)
        assert runs[0] == runs[1] and runs[0][0]  # same seed, same episodes
    finally:
        envs.close()


def test_docstrings_document_the_optimal_return():
    for module in ("bandit", "squared", "memory", "pomdp", "tool_selection"):
        doc = __import__(f"pgkit.environments.{module}", fromlist=["_"]).__doc__
        assert "Optimal return" in doc or "Optimal returns" in doc, module


def test_bandit_best_arm_pays_the_optimal_return():
    env = gym.make("pgkit/Bandit-v0").unwrapped
    env.reset(seed=0)
    best = np.mean([env.step(env.best_arm)[1] for _ in range(4000)])
    assert best == pytest.approx(env.optimal_return, abs=0.02) and env.optimal_return == 0.9
    assert np.mean(env.probabilities) < 0.5  # a random policy earns far less


def _optimal_squared_episode(env) -> tuple[float, int]:
    total, steps, done = 0.0, 0, False
    while not done:
        dr, dc = np.sign(env.target - env.agent)
        action = (2 if dr > 0 else 1) if dr else (4 if dc > 0 else 3)
        _, reward, terminated, truncated, _ = env.step(action)
        total, steps, done = total + reward, steps + 1, terminated or truncated
    return total, steps


def test_squared_optimal_policy_reaches_every_target_in_the_manhattan_distance():
    env = gym.make("pgkit/Squared-v0").unwrapped
    for seed in range(40):
        env.reset(seed=seed)
        distance = int(np.abs(env.target - env.agent).sum())
        total, steps = _optimal_squared_episode(env)
        assert total == 1.0 and steps == distance and 3 <= distance <= 6


def test_memory_needs_memory():
    env = gym.make("pgkit/Memory-v0", length=5, num_symbols=3).unwrapped
    perfect, memoryless = [], []
    for seed in range(300):
        obs, _ = env.reset(seed=seed)
        seen, total = [], 0.0
        for t in range(10):
            if t < 5:
                seen.append(int(np.argmax(obs[:3])))
                assert obs[-1] == 0.0
            else:
                assert obs.tolist() == [0.0, 0.0, 0.0, 1.0]  # recall: nothing but the flag
            obs, reward, terminated, _, _ = env.step(seen[t - 5] if t >= 5 else 0)
            total += reward
        assert terminated
        perfect.append(total)
        env.reset(seed=seed)
        memoryless.append(sum(env.step(0)[1] for _ in range(10)))  # the same action whatever it sees
    assert np.mean(perfect) == env.optimal_return == 5.0
    assert np.mean(memoryless) == pytest.approx(5 / 3, abs=0.2)


def test_no_velocity_wrappers_drop_the_velocities():
    env = gym.make("pgkit/CartPoleNoVel-v1")
    full = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=3)
    full_obs, _ = full.reset(seed=3)
    assert obs.tolist() == full_obs[[0, 2]].tolist() and env.observation_space.shape == (2,)
    assert gym.make("pgkit/PendulumNoVel-v1").observation_space.shape == (2,)

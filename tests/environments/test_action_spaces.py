"""Discrete and MultiDiscrete spaces with a non-zero ``start``: actions lie in the env's space in training,
evaluation and video, and a start pgkit cannot hand to the env exits 2."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from pgkit.cli import main
from pgkit.distributions import Categorical, MultiCategorical
from pgkit.environments.actions import ActionAdapter

QUIET = ["--set", "logger.enabled=false"]


def test_adapter_adds_the_start_and_keeps_the_space_shape():
    adapter = ActionAdapter(gym.spaces.Discrete(3, start=-1), "clip")
    raw = torch.tensor([0, 1, 2])
    assert adapter(Categorical(torch.zeros(3, 3)), raw).tolist() == [-1, 0, 1]
    multi = ActionAdapter(gym.spaces.MultiDiscrete([[3, 2], [2, 4]], start=[[-1, 5], [0, 10]]), "clip")
    raw = torch.tensor([[2, 1, 0, 3]])
    action = multi(MultiCategorical(torch.zeros(1, 11), [3, 2, 2, 4]), raw)
    assert action.tolist() == [[[1, 6], [0, 13]]]


@pytest.mark.parametrize("kind", ["discrete", "multi"])
@pytest.mark.slow
def test_fit_eval_and_video_act_inside_a_shifted_space(tmp_path, monkeypatch, capsys, kind):
    # ShiftedActionsEnv raises on any action outside its space, so every phase below would fail on unshifted actions.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    (tmp_path / "c.yaml").write_text("algorithm: {name: ppo}\n")
    args = ["fit", "--config", "c.yaml", "--set", "env.id=envs_for_tests:ShiftedActionsEnv",
            "--set", f"env.kwargs={{kind: {kind}}}", "--set", "env.num_envs=4", "--set", "algorithm.num_steps=128",
            "--set", "algorithm.num_minibatches=4", "--set", "algorithm.learning_rate=3e-3",
            "--set", "trainer.total_timesteps=8192", "--set", "trainer.output_dir=run",
            "--set", "eval.every_n_iterations=0", *QUIET]
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    capsys.readouterr()
    code = main(["eval", "--checkpoint", "run/checkpoints/last.ckpt", "--episodes", "4", "--deterministic", "--json",
                 "--video", "videos"])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    # Chance is 10/3 (discrete) or 10 * (1/3 + 1/2) (multi); the learned policy reads the one-hot target.
    chance = 10 / 3 if kind == "discrete" else 10 * (1 / 3 + 1 / 2)
    best = 10 if kind == "discrete" else 20
    assert result["mean_return"] > chance + 0.6 * (best - chance), result
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 4


def test_a_start_the_env_dtype_cannot_hold_exits_2(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("algorithm: {name: ppo}\n")
    code = main(["validate", "--config", str(tmp_path / "c.yaml"), "--set", "env.id=envs_for_tests:ShiftedActionsEnv",
                 "--set", "env.kwargs={kind: overflow}"])
    err = capsys.readouterr().err
    assert code == 2, err
    expected = "config error: env.id: MultiDiscrete([5], start=[125]) has actions from 125 to 129, outside"
    assert err.startswith(expected), err
    assert len(err.strip().splitlines()) == 1


def test_act_returns_actions_in_the_space(tmp_path, monkeypatch):
    from pgkit.config_loading import load_config
    from pgkit.evaluation import restore_agent
    from pgkit.training import fit

    monkeypatch.chdir(tmp_path)
    base = {"algorithm": {"name": "a2c", "num_steps": 8}, "env": {"id": "envs_for_tests:ShiftedActionsEnv"},
            "trainer": {"total_timesteps": 64, "output_dir": "run"}, "logger": {"enabled": False},
            "eval": {"every_n_iterations": 0}}
    module, _, _ = restore_agent(fit(load_config(None, [], base=base)).last_checkpoint)
    actions, _ = module.act(np.eye(5, dtype=np.float32)[[0, 1, 2, 0, 1, 2]], deterministic=False)
    assert set(actions.tolist()) <= {-1, 0, 1} and actions.shape == (6,)

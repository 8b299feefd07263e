"""Recurrent policies and structured observations through the CLI: every algorithm fits, evaluates and resumes with a
recurrent policy; bad settings exit 2 with one line and train nothing; videos and DDP work with images, Dicts and
recurrent states."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from paths import ROOT

from pgkit.cli import main

TINY_RECURRENT = {
    "env": {"id": "pgkit/CartPoleNoVel-v1", "num_envs": 4, "normalize_reward": False},
    "policy": {"recurrent": {"kind": "gru", "hidden_size": 16}, "actor_hidden": [16], "critic_hidden": [16]},
    "trainer": {"total_timesteps": 256, "seed": 3, "output_dir": "run"},
    "logger": {"enabled": False},
    "eval": {"every_n_iterations": 1, "episodes": 2},
}
ALGORITHMS = {
    "ppo": {"num_steps": 32, "bptt_horizon": 8, "num_minibatches": 4, "update_epochs": 2},
    "a2c": {"num_steps": 8},
    "trpo": {"num_steps": 32, "critic_batch_size": 32, "n_critic_updates": 2},
    "reinforce": {"num_steps": 32, "bptt_horizon": 16},
    "vmpo": {"num_steps": 32, "num_minibatches": 2, "update_epochs": 2},
    "grpo": {"num_steps": 64, "group_size": 4, "num_minibatches": 2},
}


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_every_algorithm_fits_evaluates_and_resumes_a_recurrent_policy(tmp_path, capsys, algorithm):
    config = {**TINY_RECURRENT, "algorithm": {"name": algorithm, **ALGORITHMS[algorithm]}}
    if algorithm == "grpo":
        config["algorithm"]["num_steps"] = 64
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    code, out, err = cli(capsys, "fit", "--config", "c.yaml")
    assert code == 0, err[-2000:]
    ckpt = torch.load("run/checkpoints/last.ckpt", weights_only=True)
    assert "policy.core.rnn.weight_hh_l0" in ckpt["state_dict"]
    steps = int(ckpt["state_dict"]["env_steps"])
    assert steps >= 256
    code, out, err = cli(capsys, "eval", "--checkpoint", "run/checkpoints/last.ckpt", "--episodes", "3", "--json",
                         "--deterministic")
    assert code == 0, err[-2000:]
    evaluated = json.loads(out)
    assert evaluated["episodes"] == 3 and evaluated["mean_return"] > 0
    code, out, err = cli(capsys, "fit", "--config", "c.yaml", "--set", "trainer.total_timesteps=512", "--resume",
                         "run/checkpoints/last.ckpt")
    assert code == 0, err[-2000:]
    assert "resuming with freshly reset envs" not in err  # the signed sidecar restored envs and states
    resumed = torch.load("run/checkpoints/last.ckpt", weights_only=True)
    assert int(resumed["state_dict"]["env_steps"]) >= 512


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["policy.encoder.images=cnn"],
         "config error: policy.encoder.images: 'cnn' needs an image observation (a uint8 Box of 3 dims, "
         "channel-last); Box(4,) float32 has none (got 'cnn')"),
        (["env.id=pgkit/Squared-v0", "env.kwargs={observation: image, size: 5}"],
         "config error: policy.encoder.cnn_kernels: an image of 5x5 entering conv layer 1 is smaller than its kernel "
         "8; use smaller cnn_kernels and cnn_strides (got kernels [8, 4, 3], strides [4, 2, 1])"),
        (["policy.encoder.cnn_kernels=[3]"],
         "config error: policy.encoder.cnn_kernels: cnn_channels, cnn_kernels and cnn_strides need one entry per "
         "convolution (got 3, 1 and 3)"),
        (["policy.recurrent={}", "algorithm.bptt_horizon=7"],
         "config error: algorithm.bptt_horizon: must divide algorithm.num_steps = 32 (got 7)"),
        (["policy.recurrent={}", "algorithm.num_minibatches=3"],
         "config error: algorithm.num_minibatches: a recurrent policy trains on whole chunks of bptt_horizon steps, "
         "and must split the 8 chunks of an iteration evenly (got 3)"),
    ],
)
def test_bad_settings_exit_2_with_one_line_and_train_nothing(tmp_path, capsys, overrides, expected):
    argv = [f"--set={o}" for o in overrides]
    code, _out, err = cli(capsys, "fit", "--config", str(ROOT / "configs" / "ppo-cartpole.yaml"), *argv)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.strip() == expected
    assert not Path("runs").exists()


def test_vtrace_and_recurrence_refusals_name_their_field(capsys):
    base = ["--set=env.id=pgkit/Bandit-v0", "--set=env.normalize_reward=false", "--set=env.num_envs=8"]
    code, _, err = cli(capsys, "validate", "--config", str(ROOT / "configs" / "grpo.yaml"), *base,
                       "--set=algorithm.advantage=vtrace")
    assert code == 2 and err.startswith("config error: algorithm.advantage: grpo does not bootstrap from a critic")
    code, _, err = cli(capsys, "validate", "--config", str(ROOT / "configs" / "grpo.yaml"), *base,
                       "--set=policy.recurrent={}", "--set=algorithm.bptt_horizon=4")
    assert code == 2 and err.startswith("config error: algorithm.bptt_horizon: GRPO replays each episode whole")
    code, _, err = cli(capsys, "validate", "--config", str(ROOT / "configs" / "reinforce-cartpole.yaml"),
                       "--set=algorithm.advantage=vtrace")
    assert code == 2 and err.startswith("config error: algorithm.advantage: reinforce does not bootstrap")


def test_tuple_of_discrete_observations_fits_evaluates_and_resumes(tmp_path, capsys):
    """Blackjack-v1 observes Tuple(Discrete(32), Discrete(11), Discrete(2)): three one-hot leaves."""
    config = {
        "algorithm": {"name": "ppo", "num_steps": 32, "num_minibatches": 2, "update_epochs": 2},
        "env": {"id": "Blackjack-v1", "num_envs": 4, "normalize_reward": False},
        "trainer": {"total_timesteps": 256, "output_dir": "run"},
        "logger": {"enabled": False},
        "eval": {"every_n_iterations": 2, "episodes": 4},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert cli(capsys, "fit", "--config", "c.yaml")[0] == 0
    state = torch.load("run/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert state["policy.actor_trunk.0.weight"].shape[1] == 32 + 11 + 2  # one-hot widths, concatenated
    assert not any("normalizer" in key for key in state)  # nothing to normalise
    code, out, err = cli(capsys, "eval", "--checkpoint", "run/checkpoints/last.ckpt", "--episodes", "5", "--json")
    assert code == 0 and json.loads(out)["episodes"] == 5, err[-2000:]
    code, _, err = cli(capsys, "fit", "--config", "c.yaml", "--set", "trainer.total_timesteps=512", "--resume",
                       "run/checkpoints/last.ckpt")
    assert code == 0, err[-2000:]


@pytest.mark.slow
def test_video_of_an_image_policy_with_memory(tmp_path, capsys):
    config = {
        "algorithm": {"name": "ppo", "num_steps": 16, "num_minibatches": 2, "update_epochs": 1},
        "env": {"id": "pgkit/Squared-v0", "kwargs": {"observation": "image", "size": 5}, "num_envs": 2},
        "policy": {"recurrent": {"hidden_size": 8},
                   "encoder": {"cnn_channels": [4], "cnn_kernels": [3], "cnn_strides": [1], "cnn_features": 16}},
        "trainer": {"total_timesteps": 32, "output_dir": "run"},
        "logger": {"enabled": False},
        "eval": {"every_n_iterations": 0},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert cli(capsys, "fit", "--config", "c.yaml")[0] == 0
    code, _out, err = cli(capsys, "eval", "--checkpoint", "run/checkpoints/last.ckpt", "--episodes", "2",
                         "--video", "videos")
    assert code == 0, err[-2000:]
    assert len(list(Path("videos").glob("*.mp4"))) == 2


@pytest.mark.slow
def test_ddp_with_a_dict_observation_and_a_recurrent_policy(tmp_path):
    db = tmp_path / "mlflow.db"
    sets = ["env.id=pgkit/Squared-v0", "env.kwargs={observation: dict}", "env.normalize_obs=true", "env.num_envs=2",
            "algorithm.num_steps=32",
            "algorithm.num_minibatches=2", "algorithm.update_epochs=2", "trainer.total_timesteps=256",
            "policy.recurrent={hidden_size: 16}", "algorithm.bptt_horizon=16",
            "policy.encoder={cnn_channels: [4], cnn_kernels: [3], cnn_strides: [1], cnn_features: 16}",
            "trainer.devices=2", "trainer.strategy=ddp", "eval.every_n_iterations=2", "eval.episodes=2",
            "trainer.output_dir=out", f"logger.tracking_uri=sqlite:///{db}"]
    cmd = [sys.executable, "-m", "pgkit", "fit", "--config", str(ROOT / "configs" / "ppo-cartpole.yaml"),
           *[arg for s in sets for arg in ("--set", s)]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ddp: 2 ranks agree on parameters and normaliser statistics" in proc.stdout
    state = torch.load(tmp_path / "out/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    # The vector key's statistics count both ranks' steps: 2 ranks x 2 envs x 32 steps x 2 iterations.
    assert float(state["obs_normalizer.normalizers.position.rms.count"]) == pytest.approx(256, abs=1e-3)
    assert not any("target" in key and "rms" in key for key in state)  # the image has no running statistics

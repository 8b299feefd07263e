"""Every algorithm: its loss by hand, and fit / eval / resume through the same CLI as PPO."""

import json

import pytest
import torch
import yaml

from pgkit.algorithms.a2c import a2c_loss
from pgkit.cli import main
from pgkit.config import ALGORITHMS


def test_a2c_loss_matches_hand_computation():
    log_prob = torch.tensor([-0.5, -1.0])
    adv = torch.tensor([2.0, -1.0])
    value, target = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 1.0])
    out = a2c_loss(log_prob, adv, value, target, torch.tensor([0.2, 0.4]))
    assert out["loss_policy"].item() == pytest.approx(-(2.0 * -0.5 + -1.0 * -1.0) / 2)
    assert out["loss_value"].item() == pytest.approx((1.0 + 4.0) / 2)
    assert out["loss_entropy"].item() == pytest.approx(-0.3)


# GRPO scores whole episodes (no reward scaling) in groups; its rollouts stop once every episode has ended, so its
# step counts only reach the budget rather than hit it exactly.
GRPO_SETTINGS = {"algorithm.group_size": 2, "env.normalize_reward": False}


def reached(name: str, steps: int, budget: int) -> bool:
    return steps >= budget if name == "grpo" else steps == budget


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.slow
def test_fit_eval_resume_through_the_cli(tmp_path, capsys, name, env_id):
    batch = 2 * 32
    extra = GRPO_SETTINGS if name == "grpo" else {}
    config = {
        "algorithm": {"name": name, "num_steps": 32, **{k[10:]: v for k, v in extra.items() if k[0] == "a"}},
        "env": {"id": env_id, "num_envs": 2, **{k[4:]: v for k, v in extra.items() if k[0] == "e"}},
        "trainer": {"total_timesteps": 2 * batch, "output_dir": "out"},
        "logger": {"enabled": False},
        "eval": {"every_n_iterations": 1, "episodes": 2},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", "c.yaml"]) == 0
    last = "out/checkpoints/last.ckpt"
    assert reached(name, int(torch.load(last, weights_only=True)["state_dict"]["env_steps"]), 2 * batch)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", last, "--episodes", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 2
    assert main(["fit", "--config", "c.yaml", "--set", f"trainer.total_timesteps={4 * batch}", "--resume", last]) == 0
    assert reached(name, int(torch.load(last, weights_only=True)["state_dict"]["env_steps"]), 4 * batch)


CASES = [
    ("Pendulum-v1", "normal"),
    ("Pendulum-v1", "tanh_normal"),
    ("CartPole-v1", "categorical"),
    ("envs_for_tests:MultiDiscreteEnv", "multi_categorical"),
]


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
@pytest.mark.parametrize(("env_id", "distribution"), CASES)
def test_every_algorithm_runs_every_distribution(name, env_id, distribution):
    from pgkit.config_loading import load_config
    from pgkit.training import fit

    overrides = [
        f"env.id={env_id}",
        "env.num_envs=2",
        f"policy.distribution={distribution}",
        "algorithm.num_steps=40",
        "trainer.total_timesteps=160",
        "logger.enabled=false",
        "eval.every_n_iterations=2",
        "eval.episodes=2",
    ]
    if name in ("ppo", "vmpo"):
        overrides.append("algorithm.num_minibatches=4")
    if name == "grpo":
        overrides += [f"{k}={v}" for k, v in GRPO_SETTINGS.items()]
    result = fit(load_config(None, overrides, base={"algorithm": {"name": name}}))
    assert reached(name, result.env_steps, 160)
    state = torch.load(result.last_checkpoint, weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for k, v in state.items() if v.is_floating_point()), "non-finite weights"

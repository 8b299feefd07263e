"""The PPO loss by hand, target-KL early stopping, action bounds, networks, vector modes and failure handling."""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

from pgkit.algorithms.ppo import ppo_loss
from pgkit.config import PolicyConfig
from pgkit.config_loading import load_config
from pgkit.distributions import Normal
from pgkit.environments.actions import ActionAdapter
from pgkit.training import fit

QUIET = ["logger.enabled=false", "eval.every_n_iterations=0"]


def test_ppo_loss_matches_hand_computation():
    log_prob = torch.log(torch.tensor([1.5, 0.5, 1.1]))  # ratios 1.5, 0.5, 1.1 against old log-prob 0
    old = torch.zeros(3)
    adv = torch.tensor([1.0, -2.0, 3.0])
    value, old_value, target = (
        torch.tensor([1.0, 2.0, 0.0]),
        torch.tensor([0.5, 2.0, 1.0]),
        torch.tensor([2.0, 2.0, 0.0]),
    )
    entropy = torch.tensor([0.3, 0.4, 0.5])
    out = ppo_loss(log_prob, old, adv, value, old_value, target, entropy, clip_range=0.2)
    # max(-A r, -A clip(r)): [-1.2, 1.6, -3.3] (pessimistic side each time)
    assert out["loss_policy"].item() == pytest.approx((-1.2 + 1.6 - 3.3) / 3)
    assert out["loss_value"].item() == pytest.approx(0.5 * (1.0 + 0.0 + 0.0) / 3)
    assert out["loss_entropy"].item() == pytest.approx(-0.4)
    assert out["clip_fraction"].item() == pytest.approx(2 / 3)
    r = torch.tensor([1.5, 0.5, 1.1])
    assert out["approx_kl"].item() == pytest.approx(((r - 1) - r.log()).mean().item(), rel=1e-6)
    clipped = ppo_loss(log_prob, old, adv, value, old_value, target, entropy, 0.2, value_clip=0.1)
    # Clipped values [0.6, 2.0, 0.9]: errors max((V-t)^2, (Vc-t)^2) = max([1, 0, 0], [1.96, 0, 0.81])
    assert clipped["loss_value"].item() == pytest.approx(0.5 * (1.96 + 0.0 + 0.81) / 3)
    sb3 = ppo_loss(log_prob, old, adv, value, old_value, target, entropy, 0.2, 0.1, "clipped")
    # SB3: the clipped prediction's error alone; the third entry's 0.81 now counts although V itself is exact.
    assert sb3["loss_value"].item() == pytest.approx(0.5 * (1.96 + 0.0 + 0.81) / 3)
    # V = 2.3 from V_old = 2.0 is clipped to 2.1; target 2.15: unclipped error 0.0225, clipped 0.0025.
    v, v_old, t = torch.tensor([2.3, 2.0, 0.0]), torch.tensor([2.0, 2.0, 0.0]), torch.tensor([2.15, 2.0, 0.0])
    sb3 = ppo_loss(log_prob, old, adv, v, v_old, t, entropy, 0.2, 0.1, "clipped")
    cleanrl = ppo_loss(log_prob, old, adv, v, v_old, t, entropy, 0.2, 0.1, "max")
    assert sb3["loss_value"].item() == pytest.approx(0.5 * 0.0025 / 3, rel=1e-5)
    assert cleanrl["loss_value"].item() == pytest.approx(0.5 * 0.0225 / 3, rel=1e-5)


@pytest.mark.parametrize(
    ("overrides", "radius", "mode"),
    [
        ([], None, "clipped"),
        (["algorithm.clip_vloss=true"], 0.2, "max"),
        (["algorithm.clip_range_vf=0.3"], 0.3, "clipped"),
    ],
)
def test_value_clipping_options_keep_their_references_meaning(overrides, radius, mode):
    cfg = load_config(None, overrides, base={"algorithm": {"name": "ppo"}, "env": {"id": "CartPole-v1"}})
    assert cfg.algorithm.value_clipping() == (radius, mode)


def test_both_value_clippings_exit_2(tmp_path, capsys):
    from pgkit.cli import main

    (tmp_path / "c.yaml").write_text("algorithm: {name: ppo}\nenv: {id: CartPole-v1}\n")
    code = main(["validate", "--config", str(tmp_path / "c.yaml"), "--set", "algorithm.clip_vloss=true",
                 "--set", "algorithm.clip_range_vf=0.2"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("config error: algorithm.clip_range_vf: choose one value clipping"), err
    assert len(err.strip().splitlines()) == 1


def test_ppo_loss_gradient_is_zero_outside_the_clip_region():
    log_prob = torch.log(torch.tensor([1.5])).requires_grad_()
    out = ppo_loss(log_prob, torch.zeros(1), torch.ones(1), *(torch.zeros(1),) * 3, torch.zeros(1), 0.2, None)
    out["loss_policy"].backward()
    assert log_prob.grad.item() == 0.0


@pytest.mark.parametrize("kernels", ["numba", "torch"])
def test_target_kl_stops_the_iteration_early(kernels):
    base = ["env.id=CartPole-v1", "algorithm.num_steps=64", "algorithm.num_minibatches=4", "algorithm.update_epochs=10"]
    overrides = [*base, "trainer.total_timesteps=64", "algorithm.learning_rate=0.05", f"trainer.kernels={kernels}",
                 *QUIET]
    seen = {}

    def run(extra):
        cfg = load_config(None, overrides + extra, base={"algorithm": {"name": "ppo"}})
        return fit(cfg)

    from pgkit.algorithms import base as base_module

    original = base_module.OnPolicyModule.accumulate_row

    def counting(self, keys, row):
        seen[self.cfg.algorithm.target_kl] = seen.get(self.cfg.algorithm.target_kl, 0) + 1
        return original(self, keys, row)

    base_module.OnPolicyModule.accumulate_row = counting
    try:
        run([])
        run(["algorithm.target_kl=0.001"])
    finally:
        base_module.OnPolicyModule.accumulate_row = original
    # Without target_kl all 40 minibatches run; a huge lr blows the KL past 1.5 x 0.001 within the first pass.
    assert seen[None] == 40
    assert 1 <= seen[0.001] < 40


def test_clip_keeps_raw_action_in_buffer():
    overrides = [
        "env.id=Pendulum-v1",
        "env.num_envs=2",
        "algorithm.num_steps=50",
        "algorithm.num_minibatches=1",
        "policy.log_std_init=1.5",
        "trainer.total_timesteps=100",
    ]
    module = load_config(None, overrides, base={"algorithm": {"name": "ppo"}}).init()
    module.setup("fit")
    module.collect_rollout()
    module.teardown("fit")
    actions = module.buffer["action"]
    assert actions.abs().max() > 2.0, "with std e^1.5 some raw samples exceed Pendulum's bound of 2"
    dist = module.policy.distribution(module.buffer["obs"].reshape(100, -1))
    torch.testing.assert_close(dist.log_prob(actions.reshape(100, -1)), module.buffer["log_prob"].reshape(100))


def test_action_adapter_clip_and_rescale():
    space = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32))
    raw = torch.tensor([[3.0, -1.0], [0.5, 0.5]])
    dist = Normal(torch.zeros(2, 2), torch.zeros(2, 2))
    assert ActionAdapter(space, "clip")(dist, raw).tolist() == [[2.0, 0.0], [0.5, 0.5]]
    assert ActionAdapter(space, "rescale")(dist, raw).tolist() == [[2.0, 0.0], [1.0, 7.5]]
    assert ActionAdapter(space, "none")(dist, raw).tolist() == raw.tolist()


def test_policy_networks_from_config():
    obs, act = gym.spaces.Box(-1, 1, (5,)), gym.spaces.Box(-1, 1, (2,))
    separate = PolicyConfig(actor_hidden=(32, 16), critic_hidden=(8,), activation="relu").init(obs, act)
    shared = PolicyConfig(actor_hidden=(32, 16), shared_trunk=True).init(obs, act)
    assert isinstance(separate.actor_trunk[1], torch.nn.ReLU)
    assert separate.critic_trunk[0].out_features == 8 and shared.critic_trunk is None
    n_sep, n_shared = (sum(p.numel() for p in m.parameters()) for m in (separate, shared))
    # separate: actor 5*32+32 + 32*16+16, critic 5*8+8, heads 16*2+2 + 2 (log-std) + 8*1+1
    assert n_sep == (192 + 528) + 48 + (34 + 2) + 9
    assert n_shared == (192 + 528) + (34 + 2) + 17
    # Orthogonal init with gain 0.01 on the policy head: rows have norm 0.01.
    torch.testing.assert_close(separate.head.mean.weight.norm(dim=1), torch.full((2,), 0.01))
    torch.testing.assert_close(separate.value_head.weight.norm(dim=1), torch.ones(1))
    dist, value = shared(torch.zeros(3, 5))
    assert dist.mean.shape == (3, 2) and value.shape == (3,)


@pytest.mark.slow
def test_async_vector_env_trains():
    overrides = [
        "env.id=CartPole-v1",
        "env.num_envs=2",
        "env.vectorization=async",
        "algorithm.num_steps=32",
        "algorithm.num_minibatches=2",
        "trainer.total_timesteps=128",
        *QUIET,
    ]
    result = fit(load_config(None, overrides, base={"algorithm": {"name": "ppo"}}))
    assert result.env_steps == 128 and result.last_checkpoint.exists()


@pytest.mark.slow
def test_failed_run_exits_1_and_keeps_last_checkpoint(tmp_path):
    config = {
        "algorithm": {"name": "ppo", "num_steps": 16, "num_minibatches": 1, "update_epochs": 1},
        "env": {"id": "envs_for_tests:CrashingEnv", "max_episode_steps": 5},
        "trainer": {"total_timesteps": 160, "output_dir": "out"},
        "logger": {"enabled": False},
        "eval": {"every_n_iterations": 0},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, "-m", "pgkit", "fit", "--config", "c.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert "simulated simulator crash" in proc.stderr and "last checkpoint kept" in proc.stderr
    ckpt = torch.load(tmp_path / "out/checkpoints/last.ckpt", weights_only=True)
    # The probe env steps none; training crashes on the 41st step, after two complete 16-step iterations.
    assert int(ckpt["state_dict"]["env_steps"]) == 32

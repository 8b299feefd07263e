"""The fused rollout forward equals the modules' forward for every network shape it accepts, and declines the rest."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from pgkit.config import PolicyConfig
from pgkit.networks.fused import fuse

BOX = gym.spaces.Box(-np.ones(3, dtype=np.float32), 2 * np.ones(3, dtype=np.float32))
OBS = gym.spaces.Box(-np.inf, np.inf, (5,), np.float32)

CASES = {
    "separate tanh": ({}, BOX),
    "separate relu, different widths": (
        {"activation": "relu", "actor_hidden": (16, 8), "critic_hidden": (32, 4)},
        BOX,
    ),
    "shared trunk": ({"shared_trunk": True}, BOX),
    "state-dependent log-std": ({"log_std": "state_dependent"}, BOX),
    "tanh-normal": ({"distribution": "tanh_normal"}, BOX),
    "categorical": ({}, gym.spaces.Discrete(4)),
    "multi-categorical": ({"activation": "elu"}, gym.spaces.MultiDiscrete([3, 2])),
    "no hidden layers": ({"actor_hidden": (), "critic_hidden": ()}, BOX),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fused_forward_equals_module_forward(name):
    settings, action_space = CASES[name]
    torch.manual_seed(0)
    net = PolicyConfig(**settings).init(OBS, action_space)
    for p in net.parameters():  # orthogonal init leaves the heads tiny; make every weight matter
        p.data.normal_(0.0, 0.5)
    obs = torch.randn(7, 5)
    forward = fuse(net)
    assert forward is not None
    dist, value = net(obs)
    fdist, fvalue = forward(obs)
    torch.testing.assert_close(fvalue, value, atol=1e-5, rtol=1e-5)
    action = dist.sample()
    # float32 summation order differs; log-densities of large random weights amplify it to ~1e-4 relative
    torch.testing.assert_close(fdist.log_prob(action), dist.log_prob(action), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fdist.mode(), dist.mode(), atol=1e-5, rtol=1e-5)
    if dist.analytic_entropy:  # tanh-normal's is a one-sample estimate
        torch.testing.assert_close(fdist.entropy(), dist.entropy(), atol=1e-4, rtol=1e-4)


def test_fused_forward_is_a_snapshot_and_declines_unequal_depths():
    net = PolicyConfig().init(OBS, BOX)
    forward = fuse(net)
    obs = torch.randn(2, 5)
    before = forward(obs)[1].clone()
    with torch.no_grad():
        net.value_head.bias.add_(1.0)
    torch.testing.assert_close(forward(obs)[1], before)  # the copy does not follow the module...
    torch.testing.assert_close(fuse(net)(obs)[1], before + 1.0)  # ...a fresh fuse does
    assert fuse(PolicyConfig(actor_hidden=(8, 8), critic_hidden=(8,)).init(OBS, BOX)) is None

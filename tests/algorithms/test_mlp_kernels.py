"""``trainer.kernels``: the compiled PPO minibatch step and acting step against the torch path on the same module,
and pgkit's Adam against torch's.

Each update case builds a PPO module, moves its weights off their initialisation (so ratios, clipping and value
clipping all happen), and computes one minibatch's loss terms and clipped gradients twice: by the kernel and by
autograd through ``PPO.loss_terms`` then ``clip_grad_norm_``. Then whole iterations through both paths are compared.
"""

from __future__ import annotations

import copy

import pytest
import torch

from pgkit.algorithms import mlp_kernels
from pgkit.algorithms.adam import Adam
from pgkit.algorithms.kernel_update import ActingKernel, KernelUpdate, unsupported, unsupported_config
from pgkit.config_loading import load_config
from pgkit.errors import ConfigError
from pgkit.training import fit

QUIET = ["logger.enabled=false", "eval.every_n_iterations=0", "checkpoint.save_best=false"]


def ppo_module(env_id: str, overrides: list[str]):
    return load_config(None, ["algorithm.name=ppo", f"env.id={env_id}", *QUIET, *overrides]).init()


def minibatch(module, rows: int, seed: int):
    """Observations, actions and rollout quantities for ``rows`` rows, with the weights moved off their init."""
    gen = torch.Generator().manual_seed(seed)
    policy = module.policy
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    obs = torch.randn(rows, module.observation_space.shape[0], generator=gen)
    with torch.no_grad():
        dist, value = policy(obs)
        action = dist.sample()
        # Old log-probs and values near the current ones, so some ratios and value changes clip and some do not.
        old_log_prob = dist.log_prob(action) + 0.3 * torch.randn(rows, generator=gen)
        old_value = value + 0.5 * torch.randn(rows, generator=gen)
    advantage = torch.randn(rows, generator=gen) + 0.5
    ret = value + torch.randn(rows, generator=gen)
    return obs, action, old_log_prob, advantage, old_value, ret


def autograd_terms(module, batch):
    policy = module.policy
    for p in policy.parameters():
        p.grad = None
    terms = module.loss_terms(*batch)
    terms["loss"].backward()
    row = [terms["loss"], terms["loss_policy"], terms["loss_value"], -terms["loss_entropy"], terms["approx_kl"],
           terms["clip_fraction"]]
    if module.algo.max_grad_norm is not None:
        row.append(torch.nn.utils.clip_grad_norm_(list(policy.parameters()), module.algo.max_grad_norm))
    return torch.stack([t.detach() for t in row]), {n: p.grad.clone() for n, p in policy.named_parameters()}


CASES = [
    ("Pendulum-v1", []),
    ("Pendulum-v1", ["policy.activation=relu", "policy.actor_hidden=[32, 16, 8]", "policy.critic_hidden=[24]"]),
    ("Pendulum-v1", ["algorithm.clip_vloss=true", "algorithm.ent_coef=0.01", "policy.log_std_init=-0.5"]),
    ("Pendulum-v1", ["algorithm.clip_range_vf=0.3", "algorithm.normalize_advantage=false",
                     "algorithm.max_grad_norm=null"]),
    ("CartPole-v1", []),
    ("CartPole-v1", ["algorithm.ent_coef=0.05", "algorithm.clip_vloss=true", "policy.activation=relu"]),
    ("Acrobot-v1", ["algorithm.clip_range_vf=0.2", "algorithm.vf_coef=1.3", "algorithm.clip_range=0.1",
                    "algorithm.max_grad_norm=0.05"]),
    ("envs_for_tests:AsymmetricBoxEnv", ["algorithm.ent_coef=0.02", "policy.actor_hidden=[16]",
                                         "policy.critic_hidden=[8, 8]"]),
]


@pytest.mark.parametrize(("env_id", "overrides"), CASES)
@pytest.mark.slow
def test_kernel_terms_and_gradients_equal_autograd(env_id, overrides):
    if not any(o.startswith("algorithm.max_grad_norm") for o in overrides):
        overrides = [*overrides, "algorithm.max_grad_norm=0.1"]  # small enough that every case clips
    module = ppo_module(env_id, overrides)
    assert isinstance(module.update_kernel, KernelUpdate)
    batch = minibatch(module, 64, seed=len(overrides))
    expected, grads = autograd_terms(module, batch)
    kernel = module.update_kernel
    kernel.prepare()
    row = kernel(*batch)
    assert row.shape == expected.shape
    torch.testing.assert_close(row, expected, rtol=2e-5, atol=1e-6)
    # The case must exercise what it is meant to: clipped ratios, and gradients clipped when max_grad_norm is set.
    assert 0.0 < float(expected[5]) < 1.0
    if module.algo.max_grad_norm is not None:
        assert float(expected[6]) > module.algo.max_grad_norm
    for name, p in module.policy.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-7, msg=name)


def test_kernel_gradient_of_a_hand_computed_minibatch():
    """One row, one action dimension, identity-like weights: the log-std gradient by hand. With A = 1 (advantage
    not normalised), a ratio inside the clip range and no entropy term, dL/dlog_std = -A r (z^2 - 1)."""
    module = ppo_module("Pendulum-v1", ["algorithm.normalize_advantage=false", "algorithm.max_grad_norm=null",
                                        "algorithm.vf_coef=0.0"])
    obs, action = torch.zeros(1, 3), torch.tensor([[0.5]])
    with torch.no_grad():
        module.policy.head.log_std_param.fill_(0.0)
        module.policy.head.mean.bias.fill_(0.0)
    # mean 0 (zero obs, zero biases), std 1: z = 0.5, log-prob = -0.125 - log sqrt(2 pi); old log-prob makes r = 1.1
    log_prob = -0.125 - 0.5 * torch.log(torch.tensor(2 * torch.pi))
    old = (log_prob - torch.log(torch.tensor(1.1))).reshape(1)
    kernel = module.update_kernel
    kernel.prepare()
    row = kernel(obs, action, old, torch.ones(1), torch.zeros(1), torch.zeros(1))
    assert float(row[1]) == pytest.approx(-1.1, rel=1e-6)  # policy loss -A r
    assert float(module.policy.head.log_std_param.grad[0]) == pytest.approx(-1.1 * (0.25 - 1.0), rel=1e-5)
    assert float(module.policy.head.mean.bias.grad[0]) == pytest.approx(-1.1 * 0.5, rel=1e-5)  # -A r z / std


def test_kernel_tanh_stays_within_float32_rounding_and_keeps_nan():
    x = torch.cat([torch.linspace(-12, 12, 100_001), torch.tensor([0.0, -0.0, 1e-30, float("inf"), -float("inf")])])
    layer = torch.eye(1).numpy()
    hs = mlp_kernels._trunk(x.reshape(-1, 1).numpy().copy(), (layer,), (torch.zeros(1).numpy(),), False)
    torch.testing.assert_close(torch.from_numpy(hs[-1]).reshape(-1), torch.tanh(x), rtol=0, atol=2.5e-7)
    nan = mlp_kernels._trunk(torch.tensor([[float("nan")]]).numpy(), (layer,), (torch.zeros(1).numpy(),), False)
    assert torch.isnan(torch.from_numpy(nan[-1])).all()


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (["policy.shared_trunk=true"], "separate actor and critic trunks"),
        (["policy.distribution=tanh_normal"], "policy.distribution: normal"),
        (["policy.log_std=state_dependent"], "state_independent"),
        (["policy.activation=elu"], "tanh or relu"),
        (["policy.recurrent={kind: lstm, hidden_size: 8}", "algorithm.num_minibatches=1"], "feedforward"),
        (["trainer.compile=true"], "trainer.compile"),
    ],
)
def test_ineligible_runs_fall_back_to_torch_or_refuse_numba(overrides, reason):
    module = ppo_module("Pendulum-v1", overrides)
    assert module.update_kernel is None and not module.use_acting_kernel
    assert reason in (unsupported_config(module.cfg) or unsupported(module.policy, module.cfg.trainer))
    refused = r"^config error: trainer\.kernels: numba cannot run this policy: .*"
    with pytest.raises(ConfigError, match=refused + reason[:8]):
        ppo_module("Pendulum-v1", [*overrides, "trainer.kernels=numba"])
    eligible = ppo_module("Pendulum-v1", [])
    assert eligible.update_kernel is not None and eligible.use_acting_kernel
    off = ppo_module("Pendulum-v1", ["trainer.kernels=torch"])
    assert off.update_kernel is None and not off.use_acting_kernel


def test_categorical_policies_update_through_the_kernel_but_act_through_torch():
    module = ppo_module("CartPole-v1", [])
    assert module.update_kernel is not None and not module.use_acting_kernel
    required = ppo_module("CartPole-v1", ["trainer.kernels=numba"])
    assert required.update_kernel is not None and not required.use_acting_kernel


@pytest.mark.parametrize(
    ("env_id", "extra"),
    [("Pendulum-v1", []), ("CartPole-v1", ["algorithm.target_kl=0.0003", "algorithm.ent_coef=0.01"])],
)
def test_an_iteration_through_the_kernel_equals_one_through_autograd(env_id, extra, tmp_path):
    """The same first rollout (same seed, same initial weights), then 4 epochs of 4 minibatches each way: the
    weights and Adam's moments after the update agree to float rounding (one Adam step moves a weight by up to
    the learning rate, 3e-4), and the target-KL stop ends both at the same minibatch."""
    states = {}
    for kernel in ("numba", "torch"):
        cfg = load_config(None, ["algorithm.name=ppo", f"env.id={env_id}", "algorithm.num_steps=256",
                                 "algorithm.num_minibatches=4", "algorithm.update_epochs=4", *extra,
                                 f"trainer.kernels={kernel}", "trainer.total_timesteps=256",
                                 f"trainer.output_dir={tmp_path / kernel}", *QUIET])
        result = fit(cfg)
        states[kernel] = torch.load(result.last_checkpoint, weights_only=False)
    numba, autograd = states["numba"], states["torch"]
    for name, weight in autograd["state_dict"].items():
        torch.testing.assert_close(numba["state_dict"][name], weight, rtol=0, atol=2e-5, msg=name)
    moments_numba = numba["optimizer_states"][0]["state"]
    moments_autograd = autograd["optimizer_states"][0]["state"]
    steps = {int(state["step"]) for state in moments_autograd.values()}
    assert steps == {int(state["step"]) for state in moments_numba.values()}
    assert len(steps) == 1
    if extra:  # the target-KL stop fired at the same minibatch, before the last one
        assert 1 < steps.pop() < 16
    else:
        assert steps == {16}
    for index, state in moments_autograd.items():
        torch.testing.assert_close(moments_numba[index]["exp_avg"], state["exp_avg"], rtol=1e-3, atol=1e-7)
        torch.testing.assert_close(moments_numba[index]["exp_avg_sq"], state["exp_avg_sq"], rtol=2e-3, atol=1e-10)


def test_a_nan_input_spreads_into_every_gradient_as_in_torch():
    module = ppo_module("Pendulum-v1", [])
    batch = list(minibatch(module, 16, seed=5))
    batch[0][3, 1] = float("nan")
    _, grads = autograd_terms(module, batch)
    kernel = module.update_kernel
    kernel.prepare()
    row = kernel(*batch)
    assert torch.isnan(row[6])
    for name, p in module.policy.named_parameters():
        assert torch.isnan(grads[name]).all() and torch.isnan(p.grad).all(), name


@pytest.mark.parametrize(
    ("env_id", "bounds"),
    [("Pendulum-v1", "clip"), ("Pendulum-v1", "rescale"), ("Pendulum-v1", "none"),
     ("envs_for_tests:AsymmetricBoxEnv", "clip"), ("envs_for_tests:AsymmetricBoxEnv", "rescale")],
)
def test_acting_kernel_equals_the_module_step(env_id, bounds):
    """Same torch seed, same noise: the kernel's raw action, log-prob, value and env action are the module's."""
    module = ppo_module(env_id, [f"env.action_bounds={bounds}", "policy.log_std_init=1.0"])
    minibatch(module, 1, seed=3)  # moves the weights (the log-stds too, each its own way) off their initialisation
    obs = 2.0 * torch.randn(20, module.observation_space.shape[0], generator=torch.Generator().manual_seed(1))
    kernel = ActingKernel(module.policy, module.action_adapter)
    torch.manual_seed(7)
    got = kernel(obs)
    torch.manual_seed(7)
    module.rollout_kernel = None
    want = module.policy_step(obs, torch.zeros(20, 0))[:4]
    for name, a, b in zip(("raw", "log_prob", "value", "env_action"), got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    low, high = module.action_adapter.low, module.action_adapter.high
    assert bounds == "none" or bool(((got[3] >= low) & (got[3] <= high)).all())
    assert (got[3] != got[0]).any() or bounds == "none"  # some actions were clipped or rescaled


def test_adam_equals_torch_fused_adam_and_shares_its_state_dict():
    gen = torch.Generator().manual_seed(0)
    shapes = [(8, 5), (8,), (3, 8), (3,), (1,)]
    ours = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    mine, reference = Adam(ours, lr=1e-2, eps=1e-5), torch.optim.Adam(theirs, lr=1e-2, eps=1e-5, fused=True)
    for step in range(60):
        for a, b in zip(ours, theirs, strict=True):
            grad = torch.randn(a.shape, generator=gen) * (1e-3 if step % 3 else 1.0)
            a.grad, b.grad = grad.clone(), grad.clone()
        if step == 30:  # a learning-rate change reaches both (as the annealing schedule makes it)
            mine.param_groups[0]["lr"] = reference.param_groups[0]["lr"] = 3e-3
        mine.step()
        reference.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    state = mine.state_dict()
    assert state["state"][0]["step"].dtype == torch.float32 and float(state["state"][0]["step"]) == 60
    restored = Adam([torch.nn.Parameter(p.detach().clone()) for p in ours], lr=1.0)
    restored.load_state_dict(copy.deepcopy(reference.state_dict()))  # torch's state loads into ours and steps on
    grads = [torch.randn(p.shape, generator=gen) for p in ours]
    for p, g, q in zip(restored.param_groups[0]["params"], grads, theirs, strict=True):
        p.grad, q.grad = g.clone(), g.clone()
    restored.step()
    reference.step()
    for p, q in zip(restored.param_groups[0]["params"], theirs, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_adam_steps_persistent_gradients_through_the_loop_and_survives_reloading_and_copies(monkeypatch):
    """Gradients written in place (as the update kernel writes them) take the compiled loop from the second step on;
    a state loaded mid-run and a deep copy go on equal to torch's Adam."""
    from pgkit.algorithms import adam as adam_module

    calls = []
    loop = adam_module.adam_update
    monkeypatch.setattr(adam_module, "adam_update", lambda *a: calls.append(1) or loop(*a))
    gen = torch.Generator().manual_seed(1)
    ours = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(6, 4), (6,), (2, 6)]]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    mine, reference = Adam(ours, lr=1e-2, eps=1e-5), torch.optim.Adam(theirs, lr=1e-2, eps=1e-5, fused=True)
    for p, q in zip(ours, theirs, strict=True):
        p.grad, q.grad = torch.zeros_like(p), torch.zeros_like(q)

    def step(pairs):
        grads = [torch.randn(p.shape, generator=gen) for p in ours]
        for opt, params in pairs:
            for p, g in zip(params, grads, strict=True):
                if p.grad is None:  # a deep copy's parameters start without gradients
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
            opt.step()

    for _ in range(5):
        step([(mine, ours), (reference, theirs)])
    assert len(calls) == 4  # every step but the first, which creates the state
    mine.load_state_dict(copy.deepcopy(reference.state_dict()))
    for _ in range(3):
        step([(mine, ours), (reference, theirs)])
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-6)
    copied = copy.deepcopy(mine)
    copied_params = copied.param_groups[0]["params"]
    for _ in range(3):
        step([(copied, copied_params), (reference, theirs)])
    for a, b in zip(copied_params, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-6)
    assert len(calls) > 6


@pytest.mark.parametrize("case", ["float64", "tensor lr", "a parameter without a gradient", "amsgrad"])
def test_adam_leaves_what_the_loop_cannot_take_to_torch(case, monkeypatch):
    from pgkit.algorithms import adam as adam_module

    def refuse(*args):
        raise AssertionError("the compiled loop must not run here")

    monkeypatch.setattr(adam_module, "adam_update", refuse)
    dtype = torch.float64 if case == "float64" else torch.float32
    params = [torch.nn.Parameter(torch.ones(3, dtype=dtype)), torch.nn.Parameter(torch.ones(2, dtype=dtype))]
    reference_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = Adam(params, lr=0.1)
    reference = torch.optim.Adam(reference_params, lr=0.1, fused=True)
    for group in (opt.param_groups[0], reference.param_groups[0]):
        if case == "tensor lr":
            group["lr"] = torch.tensor(0.1)
        if case == "amsgrad":
            group["amsgrad"] = True
    for step in range(4):
        for ps in (params, reference_params):
            for i, p in enumerate(ps):
                if case == "a parameter without a gradient" and i == 1:
                    continue
                if p.grad is None:
                    p.grad = torch.full_like(p, 1.0 + step)
                else:
                    p.grad.fill_(1.0 + step)
        opt.step()
        reference.step()
    for p, q in zip(params, reference_params, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-6)
    assert not torch.equal(params[0].detach(), torch.ones(3, dtype=dtype))

"""The compiled CPU loops of pgkit.ops against the blocked scan, TorchRL's GAE, and a plain Python recursion;
TorchRL's GAE as the trainers compile it; the scan under torch.compile."""

from __future__ import annotations

import importlib

import pytest
import torch

from pgkit.ops import gae, gae_torchrl, vtrace
from pgkit.ops.scan import discounted_reverse_cumsum, reverse_scan

gae_module = importlib.import_module("pgkit.ops.gae")  # the module: ``pgkit.ops.gae`` the attribute is the function
SHAPES = [(1, 1), (7, 1), (64, 3), (65, 5), (256, 16), (300, 40), (16, 700)]


def rollout(steps: int, envs: int, dtype: torch.dtype, seed: int = 0, ends: float = 0.05) -> list:
    g = torch.Generator().manual_seed(seed)
    reward, value, next_value = (torch.randn(steps, envs, generator=g, dtype=dtype) for _ in range(3))
    terminated = torch.rand(steps, envs, generator=g) < ends
    truncated = (torch.rand(steps, envs, generator=g) < ends) & ~terminated
    return [reward, value, next_value, terminated, truncated]


def recursion(reward, value, next_value, terminated, truncated, gamma, lam):
    """The textbook loop, in float64 with exact (not float32) discounts."""
    steps, envs = reward.shape
    out = torch.zeros(steps, envs, dtype=torch.float64)
    following = torch.zeros(envs, dtype=torch.float64)
    for t in reversed(range(steps)):
        keep = (~terminated[t]).double()
        delta = reward[t].double() + gamma * next_value[t].double() * keep - value[t].double()
        following = delta + gamma * lam * (~(terminated[t] | truncated[t])).double() * following
        out[t] = following
    return out


def scan_gae(*args):
    """pgkit.ops.gae forced onto the blocked scan (what CUDA tensors and torch.compile get)."""
    original = gae_module.fits_cpu_loops
    gae_module.fits_cpu_loops = lambda *xs: False
    try:
        return gae(*args)
    finally:
        gae_module.fits_cpu_loops = original


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_loop_equals_the_recursion_and_the_scan(shape, dtype):
    data = rollout(*shape, dtype)
    advantage, ret = gae(*data, 0.99, 0.95)
    assert advantage.dtype == dtype and advantage.shape == shape and advantage.is_contiguous()
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(advantage.double(), recursion(*data, 0.99, 0.95), rtol=tol, atol=tol)
    torch.testing.assert_close(ret, advantage + data[1])
    scanned, _ = scan_gae(*data, 0.99, 0.95)
    torch.testing.assert_close(advantage, scanned, rtol=tol, atol=tol)


def test_cpu_loop_on_batch_major_and_three_dimensional_inputs():
    reward, value, next_value, terminated, truncated = rollout(50, 6, torch.float64)
    done = terminated | truncated
    batch_major = gae_module.advantages(reward.T.contiguous(), value.T.contiguous(), next_value.T.contiguous(), 0.9,
                                        0.8, terminated.T.contiguous(), done.T.contiguous())
    expected = recursion(reward, value, next_value, terminated, truncated, 0.9, 0.8).T
    torch.testing.assert_close(batch_major, expected, rtol=1e-12, atol=1e-12)
    stacked = gae_module.advantages(*(x.T.reshape(2, 3, 50) for x in (reward, value, next_value)), 0.9, 0.8,
                                    terminated.T.reshape(2, 3, 50), done.T.reshape(2, 3, 50))
    torch.testing.assert_close(stacked.reshape(6, 50), expected, rtol=1e-12, atol=1e-12)


def test_inputs_that_need_a_gradient_take_the_differentiable_scan():
    reward, value, next_value, terminated, truncated = rollout(20, 3, torch.float64)
    value = value.clone().requires_grad_()
    advantage = gae_module.advantages(reward.T, value.T, next_value.T, 0.99, 0.95, terminated.T,
                                      (terminated | truncated).T)
    advantage.sum().backward()  # the loop would have cut the graph
    assert value.grad is not None and torch.all(value.grad < 0)  # each V(s_t) enters its own delta with -1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torchrl_gae_in_pgkit_layout_equals_pgkit(dtype):
    data = rollout(200, 8, dtype)
    ours, ours_target = gae(*data, 0.99, 0.95)
    theirs, theirs_target = gae_torchrl(*data, 0.99, 0.95)
    # TorchRL multiplies its discount by an int mask in float32, so its float64 result carries float32 rounding
    torch.testing.assert_close(theirs, ours, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(theirs_target, ours_target, rtol=2e-5, atol=2e-5)


def test_torchrl_gae_traces_as_one_graph():
    """What the trainers compile on CUDA: one graph (checked with dynamo's eager backend, no compiler needed)."""
    data = rollout(32, 4, torch.float32)
    compiled = torch.compile(gae_torchrl, backend="eager", fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(*data, 0.99, 0.95)[0], gae(*data, 0.99, 0.95)[0], rtol=2e-5, atol=2e-5)


@pytest.mark.slow
def test_the_scan_compiles_with_inductor_on_a_transposed_rollout():
    # Before: inductor failed at 256 x 16 ("Cannot view a tensor with shape [16, 16, 16, 1] and strides
    # (1, 256, 16, 1)"): the TD errors were written with out= into a buffer that took the time-major layout.
    data = rollout(256, 16, torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(gae, dynamic=False)
    torch.testing.assert_close(compiled(*data, 0.99, 0.95)[0], gae(*data, 0.99, 0.95)[0], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("shape", [(1, 1), (40, 1), (33, 9), (257, 4)])
def test_reverse_scan_loop_equals_the_scan(shape):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    discount = torch.rand(*shape, generator=g, dtype=torch.float64) * (torch.rand(*shape, generator=g) > 0.1)
    expected = discounted_reverse_cumsum(x, discount)
    torch.testing.assert_close(reverse_scan(x, discount), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(reverse_scan(x.T.contiguous().T, discount.T.contiguous().T), expected, rtol=1e-12,
                               atol=1e-12)  # a column-major layout takes the time-outer loop


def test_vtrace_loop_equals_the_scan():
    reward, value, next_value, terminated, truncated = rollout(100, 7, torch.float64)
    log_rho = 0.3 * torch.randn(100, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    args = (log_rho, reward, value, next_value, terminated, truncated, 0.99, 1.0, 1.0, 0.95)
    advantage, target = vtrace(*args)
    with torch.enable_grad():  # the scan path: an input that needs a gradient
        scanned = vtrace(log_rho.clone().requires_grad_(), *args[1:])
    torch.testing.assert_close(advantage, scanned[0].detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(target, scanned[1].detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_torchrl_gae_on_cuda_equals_pgkit():
    data = [x.cuda() for x in rollout(2048, 1, torch.float32)]
    compiled = torch.compile(gae_torchrl, dynamic=False, mode="reduce-overhead")
    expected = gae(*[x.cpu() for x in data], 0.99, 0.95)[0]
    for _ in range(3):  # warm-up, recording, replay
        torch.compiler.cudagraph_mark_step_begin()
        got = compiled(*data, 0.99, 0.95)[0].clone()
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)


def _special_values(shape, seed: int) -> torch.Tensor:
    """Normal draws with a few infinities, NaNs, zeros and exact ties mixed in."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    flat = x.view(-1)
    picks = torch.randperm(flat.numel(), generator=g)[:12]
    flat[picks[:3]] = torch.inf
    flat[picks[3:5]] = -torch.inf
    flat[picks[5:7]] = torch.nan
    flat[picks[7:9]] = 0.0
    flat[picks[9:12]] = 1.0
    return x


@pytest.mark.parametrize("case", ["clip", "ppo", "gspo_clip", "gspo_ratio", "gspo_ratio_int", "group_mean",
                                  "group_median", "group_median_large", "group_min", "group_raw"])
def test_cpu_loops_equal_the_torch_path(case):
    """Each stateset-style op gives the same numbers from its compiled loop (numpy input) and from its torch code
    (a tensor that needs a gradient), non-finite inputs included."""
    import numpy as np

    import pgkit.ops as ops

    a, b = _special_values((64, 8), 1), _special_values((64, 8), 2)
    lengths = torch.randint(0, 40, (64, 8), generator=torch.Generator().manual_seed(3)).double()
    calls = {
        "clip": lambda x, y: ops.clip_rewards(x, -0.5, 0.7),
        "ppo": lambda x, y: ops.compute_ppo_surrogate(x.exp() if isinstance(x, torch.Tensor) else np.exp(x), y, 0.2),
        "gspo_clip": lambda x, y: ops.apply_gspo_clipping(x, y, 0.1, 0.3),
        "gspo_ratio": lambda x, y: ops.compute_gspo_importance_ratios(x, y, lengths if isinstance(x, torch.Tensor)
                                                                      else lengths.numpy()),
        "gspo_ratio_int": lambda x, y: ops.compute_gspo_importance_ratios(
            x, y, lengths.long() if isinstance(x, torch.Tensor) else lengths.long().numpy()),
        "group_mean": lambda x, y: ops.compute_group_advantages(x, "mean", True),
        "group_median_large": lambda x, y: ops.compute_group_advantages(x.reshape(8, 64), "median", True),
        "group_median": lambda x, y: ops.compute_group_advantages(x, "median", True),
        "group_min": lambda x, y: ops.compute_group_advantages(x, "min", True),
        "group_raw": lambda x, y: ops.compute_group_advantages(x, "median", False),
    }
    looped = calls[case](a.numpy(), b.numpy())
    assert isinstance(looped, np.ndarray)
    traced = calls[case](a.clone().requires_grad_(), b.clone().requires_grad_())
    assert isinstance(traced, torch.Tensor) and traced.requires_grad  # the torch path, not the loop
    np.testing.assert_allclose(looped, traced.detach().numpy(), rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("prior", [(0.0, 1.0, 0), (0.3, 2.0, 50), (torch.inf, 1.0, 3), (torch.nan, 1.0, 0)])
@pytest.mark.parametrize("special", [False, True])
def test_normalize_rewards_loop_equals_the_torch_path(prior, special):
    import numpy as np

    import pgkit.ops as ops

    x = _special_values((500,), 4) if special else torch.randn(500, dtype=torch.float64) * 1e3
    looped = ops.normalize_rewards(x.numpy(), *prior)
    traced = ops.normalize_rewards(x.clone().requires_grad_(), *prior)
    assert isinstance(looped[0], np.ndarray) and traced[0].requires_grad
    np.testing.assert_allclose(looped[0], traced[0].detach().numpy(), rtol=1e-12, atol=1e-12, equal_nan=True)
    moments = [float(traced[1].detach()), float(traced[2].detach())]
    np.testing.assert_allclose(looped[1:3], moments, rtol=1e-12, equal_nan=True)
    assert looped[3] == traced[3] == prior[2] + 500

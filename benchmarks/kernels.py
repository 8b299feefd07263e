"""The compiled kernels of ``trainer.kernels`` against the torch path they replace, per call, in one run.

Run: ``pip install -e . -c constraints.txt && python benchmarks/kernels.py [--env HalfCheetah-v5]``

For ``configs/ppo.yaml``'s policy on ``--env`` (one torch thread), medians of 5 timing loops each of:

- PPO's minibatch step of 64 rows: the torch path (``PPO.loss_terms``, backward, ``clip_grad_norm_``) against
  :class:`pgkit.algorithms.kernel_update.KernelUpdate`, each followed by the same Adam step;
- acting for one env: the module path (the fused forward, sampling, the action bounds) against
  :class:`pgkit.algorithms.kernel_update.ActingKernel`;
- an Adam step over the policy's parameters: ``torch.optim.Adam(fused=True)`` against
  :class:`pgkit.algorithms.adam.Adam`.

Both sides run on the same module and inputs, after a warm-up (so numba's compile, cached on disk after the first
run, is not timed).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch


def per_call_us(fn: Callable[[], object], calls: int, repeats: int = 5) -> float:
    """Median over ``repeats`` loops of the mean microseconds per call."""
    for _ in range(max(10, calls // 10)):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--calls", type=int, default=2000, help="calls per timing loop")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from pgkit.algorithms.adam import Adam
    from pgkit.algorithms.kernel_update import ActingKernel, KernelUpdate
    from pgkit.config_loading import load_config
    from pgkit.networks.fused import fuse

    module = load_config("configs/ppo.yaml", [f"env.id={args.env}", "logger.enabled=false"]).init()
    policy, algo = module.policy, module.algo
    params = list(policy.parameters())
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(64, module.observation_space.shape[0], generator=gen)
    with torch.no_grad():
        dist, value = policy(obs)
        action = dist.sample()
        batch = (obs, action, dist.log_prob(action) + 0.1, torch.randn(64, generator=gen), value, value + 1.0)

    torch_adam = torch.optim.Adam(params, lr=3e-4, eps=1e-5, fused=True)
    kernel_adam = Adam(params, lr=3e-4, eps=1e-5)

    def torch_step() -> None:
        terms = module.loss_terms(*batch)
        torch_adam.zero_grad()
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, algo.max_grad_norm)
        torch_adam.step()

    update = KernelUpdate(policy, algo)

    def kernel_step() -> None:
        update(*batch)
        kernel_adam.step()

    rows: list[tuple[str, float, float]] = []
    torch_us = per_call_us(torch_step, args.calls)
    update.prepare()  # after torch's zero_grad set the gradients to None: persistent ones, as in training
    rows.append(("PPO minibatch step, 64 rows (loss, gradients, clipping, Adam)", torch_us,
                 per_call_us(kernel_step, args.calls)))
    rows.append(("Adam step over the policy's parameters",
                 per_call_us(torch_adam.step, args.calls), per_call_us(kernel_adam.step, args.calls)))

    one = obs[:1]
    state = torch.zeros(1, 0)
    module.rollout_forward = fuse(policy)
    module.rollout_kernel = None
    torch_act = per_call_us(lambda: module.policy_step(one, state), args.calls * 5)
    acting = ActingKernel(policy, module.action_adapter)
    rows.append(("acting, one env (forward, sample, log-prob, value, bounds)", torch_act,
                 per_call_us(lambda: acting(one), args.calls * 5)))

    print(f"# {args.env}, configs/ppo.yaml's policy, one torch thread, medians of 5 loops")
    width = max(len(name) for name, _, _ in rows)
    print(f"{'':<{width}}  {'torch us':>9}  {'kernel us':>9}  ratio")
    for name, slow, fast in rows:
        print(f"{name:<{width}}  {slow:9.1f}  {fast:9.1f}  {slow / fast:5.2f}x")


if __name__ == "__main__":
    main()

"""Adam with one compiled pass over the parameters on CPU: torch's ``Adam(fused=True)``, minus its per-step bookkeeping.

Why by hand: at the sizes of RL policies (PPO's two 64-64 MLPs hold ~10k numbers in 14 tensors) torch's Adam step
costs about 80 us on one CPU thread, almost all of it Python and dispatch around the arithmetic (gathering each
parameter's state, grouping the tensors by device and dtype, the fused op's argument checks). That is more than
half of the compiled PPO minibatch step it follows (:mod:`pgkit.algorithms.mlp_kernels`). This subclass keeps
torch's optimizer (its state, ``state_dict``, parameter groups and learning-rate changes are torch's own) and only
replaces the arithmetic of :meth:`step` by one numba loop over numpy views of the same memory, with torch's update
rule (``torch/optim/adam.py``, no AMSGrad, no weight decay)::

    m = m + (1 - beta1) (g - m);  v = beta2 v + (1 - beta2) g^2
    p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

Anything else (CUDA or non-float32 tensors, AMSGrad, weight decay, a parameter without a gradient, the first step,
which creates the state) goes through ``torch.optim.Adam.step`` itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from numba import njit


@njit(cache=True, nogil=True)
def adam_update(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, eps):  # pragma: no cover - compiled
    """One Adam step of every ``params[k]`` (flat float32 views) in place; ``steps[k]`` is a 1-element view of that
    parameter's step count."""
    for k in range(len(params)):
        steps[k][0] += 1.0
        step = float(steps[k][0])
        step_size = np.float32(lr / (1.0 - beta1**step))
        inv_bias2_sqrt = np.float32(1.0 / math.sqrt(1.0 - beta2**step))
        one_minus_beta1, one_minus_beta2 = np.float32(1.0 - beta1), np.float32(1.0 - beta2)
        b2, epsilon = np.float32(beta2), np.float32(eps)
        p, g, m, v = params[k], grads[k], exp_avgs[k], exp_avg_sqs[k]
        for i in range(p.size):
            gi = g[i]
            m[i] += one_minus_beta1 * (gi - m[i])
            v[i] = b2 * v[i] + one_minus_beta2 * gi * gi
            p[i] -= step_size * m[i] / (np.sqrt(v[i]) * inv_bias2_sqrt + epsilon)


def _flat(t: torch.Tensor) -> np.ndarray:
    return t.detach().view(-1).numpy()


class Adam(torch.optim.Adam):
    """``torch.optim.Adam(params, lr, eps=eps, fused=True)`` whose CPU float32 steps run as one compiled loop."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, eps: float = 1e-8) -> None:
        super().__init__(params, lr=lr, eps=eps, fused=True)
        self._views: list[tuple[list[torch.Tensor], tuple[tuple[np.ndarray, ...], ...]] | None] = []

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._views = []  # the state tensors were replaced

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._views = []

    def _group_views(self, index: int, group: dict[str, Any]) -> tuple[tuple[np.ndarray, ...], ...] | None:
        """Numpy views of a group's parameters, gradients, moments and steps, or None when the compiled loop cannot
        take this group now. Cached while every gradient is the same tensor as when they were taken."""
        params: list[torch.Tensor] = group["params"]
        if len(self._views) <= index:
            self._views.extend([None] * (index + 1 - len(self._views)))
        cached = self._views[index]
        if cached is not None and all(p.grad is g for p, g in zip(params, cached[0], strict=True)):
            return cached[1]
        if group["amsgrad"] or group["weight_decay"] or group["maximize"] or group["capturable"] \
                or group["differentiable"] or torch.is_tensor(group["lr"]):
            return None
        for p in params:
            state = self.state.get(p)
            if p.grad is None or not state or p.dtype != torch.float32 or p.device.type != "cpu" \
                    or p.grad.layout != torch.strided or not (p.is_contiguous() and p.grad.is_contiguous()):
                return None
        states = [self.state[p] for p in params]
        views = tuple(
            tuple(_flat(t) for t in tensors)
            for tensors in (
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [s["step"] for s in states],
            )
        )
        self._views[index] = ([p.grad for p in params], views)
        return views

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = list(enumerate(self.param_groups))
        views = [self._group_views(index, group) for index, group in groups]
        if any(v is None for v in views):
            super().step()
            return loss
        for (_, group), arrays in zip(groups, views, strict=True):
            beta1, beta2 = group["betas"]
            adam_update(*arrays, float(group["lr"]), float(beta1), float(beta2), float(group["eps"]))
        return loss


__all__ = ["Adam", "adam_update"]

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

Anything else (CUDA or non-float32 tensors, AMSGrad, weight decay, a tensor learning rate, a parameter without a
gradient, the first step, which creates the state) goes through ``torch.optim.Adam.step`` itself.
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
    """``torch.optim.Adam(params, lr, eps=eps, fused=True)`` whose CPU float32 steps run as one compiled loop.

    Made for gradients that persist between steps, as PPO's update kernel writes them
    (:class:`pgkit.algorithms.kernel_update.KernelUpdate`): the loop runs on numpy views of the parameters, gradients
    and state, kept while every tensor is the one viewed and taken again when one was replaced. Whether a step takes
    the loop depends only on that step (the state exists, the tensors qualify), never on earlier steps, so a resumed
    run steps exactly as an uninterrupted one. Code that sets gradients to None between steps should use torch's
    Adam: views retaken at every step cost more than they save (:func:`pgkit.algorithms.common.adam` chooses).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, eps: float = 1e-8) -> None:
        super().__init__(params, lr=lr, eps=eps, fused=True)
        self._reset_views()

    def _reset_views(self) -> None:
        self._views: dict[int, tuple[list[Any], tuple[tuple[np.ndarray, ...], ...]]] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:  # copies and unpickling keep torch's attributes only
        super().__setstate__(state)
        self._reset_views()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._reset_views()  # the state tensors were replaced

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "_views"):  # torch's __init__ adds the first groups before ours runs
            self._reset_views()

    def _still_valid(self, params: list[torch.Tensor], cached: list[tuple[Any, ...]]) -> bool:
        """Whether every parameter still has the memory, gradient and state tensors its cached views were taken of."""
        if len(params) != len(cached):
            return False
        for p, (ptr, grad, state, exp_avg, exp_avg_sq, step) in zip(params, cached, strict=True):
            if p.grad is not grad or p.data_ptr() != ptr or self.state.get(p) is not state \
                    or state["exp_avg"] is not exp_avg or state["exp_avg_sq"] is not exp_avg_sq \
                    or state["step"] is not step:
                return False
        return True

    def _group_views(self, index: int, group: dict[str, Any]) -> tuple[tuple[np.ndarray, ...], ...] | None:
        """Numpy views of a group's parameters, gradients, moments and steps, or None when the compiled loop does not
        take this group now (torch's step does)."""
        if group["amsgrad"] or group["weight_decay"] or group["maximize"] or group["capturable"] \
                or group["differentiable"] or torch.is_tensor(group["lr"]):
            return None
        params: list[torch.Tensor] = group["params"]
        cached = self._views.get(index)
        if cached is not None and self._still_valid(params, cached[0]):
            return cached[1]
        states = [self.state.get(p) for p in params]
        for p, state in zip(params, states, strict=True):
            if p.grad is None or not state or p.dtype != torch.float32 or p.device.type != "cpu" \
                    or p.grad.layout != torch.strided or not (p.is_contiguous() and p.grad.is_contiguous()):
                return None
        views = tuple(
            tuple(_flat(t) for t in column)
            for column in (
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [s["step"] for s in states],
            )
        )
        keys = [(p.data_ptr(), p.grad, s, s["exp_avg"], s["exp_avg_sq"], s["step"]) for p, s in zip(params, states,
                                                                                                    strict=True)]
        self._views[index] = (keys, views)
        return views

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        views = [self._group_views(index, group) for index, group in enumerate(self.param_groups)]
        if any(v is None for v in views):
            super().step()
            return loss
        for group, arrays in zip(self.param_groups, views, strict=True):
            beta1, beta2 = group["betas"]
            adam_update(*arrays, float(group["lr"]), float(beta1), float(beta2), float(group["eps"]))
        return loss


__all__ = ["Adam", "adam_update"]

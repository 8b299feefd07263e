"""``trainer.compile``: the acting step, the update's loss and (on CUDA) GAE compiled with ``torch.compile``.

A mixin of :class:`~pgkit.algorithms.base.OnPolicyModule`. The functions are pure tensor functions with static
shapes, so on CUDA they are also captured as CUDA graphs (``mode="reduce-overhead"``). On CUDA the advantages go
through TorchRL's GAE loop under ``torch.compile`` (:func:`pgkit.ops.gae_torchrl`), as TorchRL's own
``ppo_mujoco`` does; on CPU pgkit's compiled loop (:mod:`pgkit.ops.kernels`) is faster on every shape measured
(``benchmarks/gae.py``), so it stays. Recurrent policies stay eager: their replayed sequences change layout every
minibatch, and cuDNN (oneDNN on CPU) already fuses the recurrence.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pgkit.ops import gae, gae_torchrl


class Compilation:
    """Compiles :meth:`policy_step` and :meth:`loss_terms` when ``trainer.compile`` asks for it."""

    _compiled = False
    _graph_steps = False
    gae_fn = staticmethod(gae)
    """The GAE the rollout's targets come from: :func:`pgkit.ops.gae`, or compiled TorchRL GAE on CUDA."""

    @property
    def compile_enabled(self) -> bool:
        """Whether ``trainer.compile`` resolves to compiling on this module's device (never for a recurrent policy)."""
        setting = self.cfg.trainer.compile
        if self.policy.recurrent:
            return False
        return self.device.type == "cuda" if setting == "auto" else bool(setting)

    def setup_compile(self) -> None:
        """Replace :meth:`policy_step` and :meth:`loss_terms` by compiled versions when compiling is on (called
        once the module is on its device)."""
        if not self.compile_enabled:
            return
        options: dict[str, Any] = {"dynamic": False}
        if self.device.type == "cuda" and self.cfg.trainer.cuda_graphs:
            options["mode"] = "reduce-overhead"  # CUDA graphs: shapes are static per call site
        self._compiled = True  # the compiler fuses the layers itself: act through the modules
        self.policy_step = torch.compile(self.policy_step, **options)
        self.loss_terms = torch.compile(self.loss_terms, **options)
        if self.device.type == "cuda":
            self.gae_fn = torch.compile(gae_torchrl, **options)
        self._graph_steps = options.get("mode") == "reduce-overhead"

    def mark_step(self) -> None:
        """Tell CUDA-graph trees a new step begins, so the previous step's graph outputs may be overwritten
        (they are copied into the buffer or reduced before the next call)."""
        if self._graph_steps:
            torch.compiler.cudagraph_mark_step_begin()

    def loss_terms(self, *tensors: Tensor) -> dict[str, Tensor]:
        """The differentiable part of an algorithm's loss as a pure tensor function (compiled with
        ``trainer.compile``); algorithms that route their loss through it override it."""
        raise NotImplementedError

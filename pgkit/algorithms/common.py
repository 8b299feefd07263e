"""Fields every on-policy algorithm config shares."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field


def adam(params: Iterable[Any], lr: float = 1e-3, eps: float = 1e-8, compiled_step: bool = False) -> torch.optim.Adam:
    """torch's Adam with the fused kernel: one call updates every parameter, where the default CPU path dispatches
    about ten small ops per parameter tensor. With ``compiled_step`` (for gradients that persist between steps, as
    PPO's update kernel writes them) its CPU float32 steps run as one compiled loop instead
    (:class:`pgkit.algorithms.adam.Adam`). Same update rule, state and ``state_dict`` either way."""
    if compiled_step:
        from pgkit.algorithms.adam import Adam

        return Adam(params, lr=lr, eps=eps)
    return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)


class AlgorithmConfigBase(BaseModel):
    """Hyperparameters common to all algorithms. Each algorithm subclasses this with its own ``name`` literal."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    learning_rate: float = Field(3e-4, gt=0, le=10)
    """Optimizer learning rate (the initial one when annealed)."""
    anneal_lr: bool = True
    """Anneal the learning rate linearly to 0 over the run, once per iteration."""
    num_steps: int = Field(2048, ge=1, le=1_000_000)
    """Environment steps per sub-env per iteration; the batch is ``num_steps * env.num_envs`` transitions."""
    gamma: float = Field(0.99, ge=0, le=1)
    """Discount factor."""
    gae_lambda: float = Field(0.95, ge=0, le=1)
    """GAE lambda (1.0 gives Monte-Carlo / n-step returns)."""
    max_grad_norm: float | None = Field(0.5, gt=0)
    """Clip the global gradient norm to this value (Lightning's ``gradient_clip_val``); null disables it."""
    advantage: Literal["gae", "vtrace"] = "gae"
    """``gae``: GAE from the rollout's values, once per iteration. ``vtrace``: IMPALA's V-trace, recomputed at every
    pass over the batch from the behaviour log-probs against the current policy's and the current critic's values,
    with ``gae_lambda`` as its lambda (1 is IMPALA's)."""
    vtrace_rho_clip: float = Field(1.0, gt=0)
    """V-trace's rho-bar: importance weights in the TD errors are clipped to at most this."""
    vtrace_c_clip: float = Field(1.0, gt=0)
    """V-trace's c-bar: importance weights in the trace are clipped to at most this."""
    bptt_horizon: int | None = Field(None, ge=1)
    """Recurrent policies train on chunks of this many steps of one env (truncated BPTT), each from the state the
    rollout stored at its start; null means the whole rollout (``num_steps``). Must divide ``num_steps``."""

    #: Whether this algorithm can use V-trace (it needs a critic that bootstraps).
    supports_vtrace: ClassVar[bool] = True
    #: Whether this algorithm can train a recurrent policy.
    supports_recurrent: ClassVar[bool] = True

    def check_experiment(self, experiment) -> None:
        """Raise ``ValueError("<dotted field>: <problem> (got <value>)")`` for settings this algorithm cannot run."""

    def check_common(self, experiment) -> None:
        """The checks every algorithm shares: recurrent settings and V-trace."""
        recurrent = experiment.policy.recurrent is not None
        if recurrent and not self.supports_recurrent:
            raise ValueError(f"policy.recurrent: {self.name} cannot train a recurrent policy; remove "
                             f"policy.recurrent (got {experiment.policy.recurrent.model_dump()})")
        if self.bptt_horizon is not None and self.num_steps % self.bptt_horizon:
            raise ValueError(f"algorithm.bptt_horizon: must divide algorithm.num_steps = {self.num_steps} "
                             f"(got {self.bptt_horizon})")
        if self.advantage == "vtrace" and not self.supports_vtrace:
            raise ValueError(f"algorithm.advantage: {self.name} does not bootstrap from a critic, so it has no use "
                             "for V-trace (got 'vtrace')")
        if recurrent:
            chunks = (self.num_steps // (self.bptt_horizon or self.num_steps)) * experiment.env.num_envs
            minibatches = getattr(self, "num_minibatches", 1)
            if chunks % minibatches:
                raise ValueError(
                    f"algorithm.num_minibatches: a recurrent policy trains on whole chunks of bptt_horizon steps, "
                    f"and must split the {chunks} chunks of an iteration evenly (got {minibatches})"
                )

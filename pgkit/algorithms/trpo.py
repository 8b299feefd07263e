"""Trust Region Policy Optimization (Schulman et al. 2015), with sb3-contrib's defaults except the KL.

The trust region bounds the paper's KL: the mean over states of the KL of the joint action distribution (summed over
a Gaussian's action dims), as in OpenAI baselines and Spinning Up. sb3-contrib averages over the action dims too,
so its ``target_kl`` is D times looser for D action dims (measured 5.8x on HalfCheetah, D = 6).

The policy takes one natural-gradient step per rollout: conjugate gradient on Fisher-vector products (the Hessian of
the mean KL, with damping), scaled to the KL bound, then a backtracking line search that accepts a step only if the
KL stays within the bound *and* the surrogate improves; otherwise the parameters are restored exactly. The critic is
trained separately by minibatch regression on the returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from tensordict import TensorDict
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from pgkit.algorithms.base import OnPolicyModule
from pgkit.algorithms.common import adam
from pgkit.algorithms.configs import TRPOConfig
from pgkit.distributions import ActionDistribution
from pgkit.ops import normalize


def surrogate(log_prob: Tensor, old_log_prob: Tensor, advantage: Tensor) -> Tensor:
    """The importance-weighted advantage ``mean(exp(log_prob - old_log_prob) * A)``, to be maximised."""
    return (torch.exp(log_prob - old_log_prob) * advantage).mean()


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, iterations: int, residual_tol: float = 1e-10
) -> Tensor:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given only ``v -> A v``."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r.dot(r)
    for _ in range(iterations):
        if rr < residual_tol:
            break
        Ap = matvec(p)
        alpha = rr / p.dot(Ap)
        x += alpha * p
        r -= alpha * Ap
        rr_new = r.dot(r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def line_search(
    params: Sequence[nn.Parameter],
    full_step: Tensor,
    evaluate: Callable[[], tuple[float, float]],
    max_kl: float,
    baseline_objective: float,
    shrink: float,
    max_iterations: int,
) -> tuple[float, float, float]:
    """Try ``params + shrink**i * full_step`` for i = 0, 1, ...; keep the first with KL <= max_kl and an objective
    above ``baseline_objective``. ``evaluate()`` returns ``(kl, objective)`` at the current parameters.

    Returns ``(step_fraction, kl, objective)``; a fraction of 0 means every try failed and the parameters are
    restored bit-for-bit (from a copy, not by subtracting the step).
    """
    saved = [p.detach().clone() for p in params]
    start = parameters_to_vector(saved)
    with torch.no_grad():
        for i in range(max_iterations):
            fraction = shrink**i
            vector_to_parameters(start + fraction * full_step, params)
            kl, objective = evaluate()
            if kl <= max_kl and objective > baseline_objective:
                return fraction, kl, objective
        for p, s in zip(params, saved, strict=True):
            p.copy_(s)
    return 0.0, 0.0, baseline_objective


def natural_gradient_step(
    params: Sequence[nn.Parameter],
    distribution: Callable[[], ActionDistribution],
    actions: Tensor,
    old_log_prob: Tensor,
    advantage: Tensor,
    max_kl: float,
    cg_iterations: int,
    cg_damping: float,
    shrink: float,
    max_backtracks: int,
) -> dict[str, Tensor]:
    """One TRPO policy update in place on ``params``; ``distribution()`` evaluates the policy on the batch."""
    with torch.no_grad():
        old_dist = distribution()
    dist = distribution()
    objective = surrogate(dist.log_prob(actions), old_log_prob, advantage)
    grad = parameters_to_vector(torch.autograd.grad(objective, params, retain_graph=True))
    # Fisher-vector products as Hessian-vector products of the mean KL at the current parameters.
    kl_grad = parameters_to_vector(torch.autograd.grad(old_dist.kl(dist).mean(), params, create_graph=True))

    def fisher_vector(v: Tensor) -> Tensor:
        hv = torch.autograd.grad(kl_grad.dot(v), params, retain_graph=True)
        return parameters_to_vector(hv) + cg_damping * v

    direction = conjugate_gradient(fisher_vector, grad, cg_iterations)
    curvature = direction.dot(fisher_vector(direction))
    full_step = torch.sqrt(2.0 * max_kl / (curvature + 1e-8)) * direction

    def evaluate() -> tuple[float, float]:
        new_dist = distribution()
        kl = old_dist.kl(new_dist).mean()
        return float(kl), float(surrogate(new_dist.log_prob(actions), old_log_prob, advantage))

    baseline = float(objective.detach())
    fraction, kl, new_objective = line_search(params, full_step, evaluate, max_kl, baseline, shrink, max_backtracks)
    return {
        "step_fraction": torch.tensor(fraction),
        "kl": torch.tensor(kl),
        "surrogate_improvement": torch.tensor(new_objective - baseline),
        "accepted": torch.tensor(float(fraction > 0)),
    }


class TRPO(OnPolicyModule):
    """TRPO as a LightningModule with manual optimisation: one policy step and the critic epochs per iteration."""

    def __init__(self, config: dict, spaces: tuple[Any, Any] | None = None) -> None:
        super().__init__(config, spaces)
        self.algo: TRPOConfig = self.cfg.algorithm
        self.automatic_optimization = False

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self.policy.critic_parameters(), lr=self.algo.learning_rate)

    def compute_loss(self, batch: TensorDict) -> dict[str, Tensor | None]:
        a = self.algo
        obs, actions, sequences = batch["obs"], batch["action"], self.sequences(batch)
        advantage = normalize(batch["advantage"]) if a.normalize_advantage else batch["advantage"]
        # Fisher-vector products differentiate twice; cuDNN's RNN kernels are differentiable once only, so a
        # recurrent policy on CUDA takes PyTorch's own RNN ops here (a no-op for MLPs and on CPU).
        with torch.backends.cudnn.flags(enabled=False):
            terms = natural_gradient_step(
                self.policy.actor_parameters(),
                lambda: self.policy.distribution(obs, sequences),
                actions,
                batch["log_prob"],
                advantage,
                a.target_kl,
                a.cg_max_steps,
                a.cg_damping,
                a.line_search_shrinking_factor,
                a.line_search_max_iter,
            )
        terms["value_loss"] = self.regress_value(
            self.optimizers(), batch, a.n_critic_updates, a.critic_batch_size, a.max_grad_norm
        )
        with torch.no_grad():
            terms["entropy"] = self.policy.distribution(obs, sequences).entropy().mean()
        terms["loss"] = None  # the steps are taken above
        return terms

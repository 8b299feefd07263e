"""Advantage Actor-Critic (Mnih et al. 2016, synchronous), with Stable-Baselines3's defaults."""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict
from torch import Tensor

from pgkit.algorithms.base import OnPolicyModule
from pgkit.algorithms.configs import A2CConfig
from pgkit.ops import normalize


def a2c_loss(
    log_prob: Tensor, advantage: Tensor, value: Tensor, value_target: Tensor, entropy: Tensor
) -> dict[str, Tensor]:
    """``loss_policy = -mean(A log pi)``, ``loss_value = mean((V - target)^2)`` (no 1/2, as SB3),
    ``loss_entropy = -mean(entropy)``."""
    return {
        "loss_policy": -(advantage * log_prob).mean(),
        "loss_value": (value - value_target).pow(2).mean(),
        "loss_entropy": -entropy.mean(),
    }


class A2C(OnPolicyModule):
    """A2C: one gradient step on the whole rollout per iteration."""

    # The base takes the single step itself (manual optimisation): Lightning's automatic-optimisation closure costs
    # more than the update of a 5-step rollout.
    fused_minibatches = True

    def __init__(self, config: dict, spaces: tuple[Any, Any] | None = None) -> None:
        super().__init__(config, spaces)
        self.algo: A2CConfig = self.cfg.algorithm
        self.automatic_optimization = False

    def configure_optimizers(self) -> torch.optim.Optimizer:
        a = self.algo
        # foreach: one multi-tensor kernel per op instead of a loop over parameter tensors (the CPU default).
        return torch.optim.RMSprop(
            self.policy.parameters(), lr=a.learning_rate, alpha=a.rms_prop_alpha, eps=a.rms_prop_eps, foreach=True
        )

    def compute_loss(self, batch: TensorDict) -> dict[str, Tensor | None]:
        a = self.algo
        dist, value = self.policy(batch["obs"], self.sequences(batch))
        advantage = normalize(batch["advantage"]) if a.normalize_advantage else batch["advantage"]
        entropy = dist.entropy()
        terms = a2c_loss(dist.log_prob(batch["action"]), advantage, value, batch["return"], entropy)
        loss = terms["loss_policy"] + a.vf_coef * terms["loss_value"] + a.ent_coef * terms["loss_entropy"]
        return {
            "loss": loss,
            "policy_loss": terms["loss_policy"],
            "value_loss": terms["loss_value"],
            "entropy": entropy.mean().detach(),
        }

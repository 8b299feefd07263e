"""Proximal Policy Optimization (Schulman et al. 2017), with CleanRL's MuJoCo defaults except value clipping (off)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from tensordict import TensorDict
from torch import Tensor

from pgkit.algorithms import kernel_update
from pgkit.algorithms.base import OnPolicyModule
from pgkit.algorithms.common import adam
from pgkit.algorithms.configs import PPOConfig
from pgkit.networks.recurrent import Sequences
from pgkit.ops import clipped_surrogate, kl_k3, normalize


def ppo_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantage: Tensor,
    value: Tensor,
    old_value: Tensor,
    value_target: Tensor,
    entropy: Tensor,
    clip_range: float,
    value_clip: float | None = None,
    value_clip_mode: Literal["max", "clipped"] = "max",
    mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """The clipped surrogate, the (optionally clipped) value loss and the entropy term, plus diagnostics.

    ``loss_policy = mean(max(-A r, -A clip(r, 1-eps, 1+eps)))`` with ``r = exp(log_prob - old_log_prob)``;
    ``loss_entropy = -mean(entropy)``; ``approx_kl`` is the low-variance estimator ``mean((r - 1) - log r)``.

    The value loss is ``0.5 mean((V - target)^2)`` when ``value_clip`` is None. Otherwise, with the clipped
    prediction ``Vc = V_old + clip(V - V_old, -value_clip, value_clip)``:

    - ``value_clip_mode="max"``: ``0.5 mean(max((V - target)^2, (Vc - target)^2))``, the pessimistic form of
      OpenAI baselines' PPO2, CleanRL's ``clip_vloss`` and TRL's ``cliprange_value``;
    - ``value_clip_mode="clipped"``: ``0.5 mean((Vc - target)^2)``, SB3's ``clip_range_vf``.

    Every mean is over the entries where ``mask`` is 1 when one is given (the tokens of text completions).
    """
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    surrogate = -clipped_surrogate(ratio, advantage, clip_range, clip_range)
    value_error = (value - value_target).pow(2)
    if value_clip is not None:
        clipped_error = (old_value + (value - old_value).clamp(-value_clip, value_clip) - value_target).pow(2)
        value_error = torch.max(value_error, clipped_error) if value_clip_mode == "max" else clipped_error

    def mean(x: Tensor) -> Tensor:
        return x.mean() if mask is None else (x * mask).sum() / mask.sum().clamp_min(1.0)

    with torch.no_grad():
        approx_kl = mean(kl_k3(log_ratio))
        clip_fraction = mean(((ratio - 1.0).abs() > clip_range).float())
    return {
        "loss_policy": mean(surrogate),
        "loss_value": 0.5 * mean(value_error),
        "loss_entropy": -mean(entropy),
        "approx_kl": approx_kl,
        "clip_fraction": clip_fraction,
    }


class PPO(OnPolicyModule):
    """PPO as a LightningModule: the base collects and batches, this class computes the loss and optimises."""

    fused_minibatches = True

    def __init__(self, config: dict, spaces: tuple[Any, Any] | None = None) -> None:
        super().__init__(config, spaces)
        algo: PPOConfig = self.cfg.algorithm
        self.algo = algo
        self.update_epochs, self.num_minibatches = algo.update_epochs, algo.num_minibatches
        self.automatic_optimization = False  # the base steps each minibatch itself (fused_minibatches)
        if kernel_update.wanted(self.policy, self.cfg):  # trainer.kernels
            self.update_kernel = kernel_update.KernelUpdate(self.policy, algo)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self.policy.parameters(), lr=self.algo.learning_rate, eps=self.algo.adam_eps,
                    compiled_step=self.update_kernel is not None)

    def loss_terms(
        self,
        obs: Tensor,
        action: Tensor,
        old_log_prob: Tensor,
        advantage: Tensor,
        old_value: Tensor,
        ret: Tensor,
        sequences: Sequences | None = None,
    ) -> dict[str, Tensor]:
        algo = self.algo
        dist, value = self.policy(obs, sequences)
        if algo.normalize_advantage:
            advantage = normalize(advantage)
        terms = ppo_loss(
            dist.log_prob(action),
            old_log_prob,
            advantage,
            value,
            old_value,
            ret,
            dist.entropy(),
            algo.clip_range,
            *algo.value_clipping(),
        )
        weighted = algo.vf_coef * terms["loss_value"] + algo.ent_coef * terms["loss_entropy"]
        terms["loss"] = terms["loss_policy"] + weighted
        return terms

    def kernel_step(self, batch: TensorDict, optimizer: torch.optim.Optimizer) -> bool:
        row = self.update_kernel(
            batch["obs"], batch["action"], batch["log_prob"], batch["advantage"], batch["value"], batch["return"]
        )
        keys, at = self.update_kernel.terms, self.update_kernel.index
        target_kl = self.algo.target_kl
        if target_kl is not None and float(row[at["approx_kl"]]) > 1.5 * target_kl:
            # as compute_loss: no step, end the updates, and keep every term but the loss
            measured = slice(at["policy_loss"], at["clip_fraction"] + 1)
            self.accumulate_row(keys[measured], row[measured])
            return False
        if self.skip_batch(row[at["loss"]]) or ("grad_norm" in at and self.skip_batch(row[at["grad_norm"]])):
            return True
        self.accumulate_row(keys, row)
        optimizer.step()
        return True

    def compute_loss(self, batch: TensorDict) -> dict[str, Tensor | None]:
        algo = self.algo
        terms = self.loss_terms(
            batch["obs"], batch["action"], batch["log_prob"], batch["advantage"], batch["value"], batch["return"],
            self.sequences(batch),
        )
        loss = terms["loss"]
        if algo.target_kl is not None and float(terms["approx_kl"]) > 1.5 * algo.target_kl:
            # As SB3: this minibatch already moved too far, so skip its step and end the iteration's updates.
            loss = None
        return {
            "loss": loss,
            "policy_loss": terms["loss_policy"],
            "value_loss": terms["loss_value"],
            "entropy": -terms["loss_entropy"].detach(),
            "approx_kl": terms["approx_kl"],
            "clip_fraction": terms["clip_fraction"],
        }

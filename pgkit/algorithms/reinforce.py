"""REINFORCE (Williams 1992): Monte-Carlo policy gradient with an optional baseline."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tensordict import TensorDict
from torch import Tensor

from pgkit.algorithms.base import OnPolicyModule
from pgkit.algorithms.common import adam
from pgkit.algorithms.configs import ReinforceConfig
from pgkit.ops import gae, normalize


def reward_to_go(
    reward: Tensor, terminated: Tensor, truncated: Tensor, bootstrap_value: Tensor, gamma: float
) -> Tensor:
    """Discounted Monte-Carlo returns ``G_t = sum_k gamma^k r_{t+k}`` to each episode's end, ``[T, N]``.

    ``bootstrap_value[t]`` is added (discounted) after step ``t`` where an episode is cut without terminating (a
    truncation, or the end of the rollout); it is zero wherever no estimate should be used. This is GAE with
    ``lambda = 1`` and a zero value function, so it runs through the one GAE implementation.
    """
    zeros = torch.zeros_like(reward)
    returns, _ = gae(reward, zeros, bootstrap_value, terminated, truncated, gamma, 1.0)
    return returns


def complete_episode_mask(done: Tensor) -> Tensor:
    """1 for steps whose episode ends inside the rollout, 0 for the unfinished tail of each env, ``[T, N]``."""
    ends_later = done.flip(0).cumsum(0).flip(0) > 0
    return ends_later.float()


def first_episode_mask(done: Tensor, length: int) -> Tensor:
    """1 for each env's steps up to and including its first episode end, if it ends; padded with 0 to ``length``."""
    before_first_end = (done.cumsum(0) - done.long()) == 0
    ends = done.any(0, keepdim=True)
    mask = torch.zeros(length, done.shape[1], device=done.device)
    mask[: done.shape[0]] = (before_first_end & ends).float()
    return mask


def reinforce_loss(log_prob: Tensor, weight: Tensor, mask: Tensor, entropy: Tensor) -> dict[str, Tensor]:
    """``loss_policy = -sum(mask * weight * log pi) / sum(mask)``; ``loss_entropy = -masked mean(entropy)``."""
    n = mask.sum().clamp_min(1.0)
    return {"loss_policy": -(mask * weight * log_prob).sum() / n, "loss_entropy": -(mask * entropy).sum() / n}


class Reinforce(OnPolicyModule):
    """REINFORCE: one policy-gradient step per batch of complete-episode returns."""

    def __init__(self, config: dict, spaces: tuple[Any, Any] | None = None) -> None:
        super().__init__(config, spaces)
        self.algo: ReinforceConfig = self.cfg.algorithm
        self.automatic_optimization = False
        self.learned_value = self.algo.baseline == "value"
        self.separate_critic = self.learned_value and self.algo.value_training == "separate"

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        a = self.algo
        if not self.separate_critic:
            params = self.policy.parameters() if self.learned_value else self.policy.actor_parameters()
            return [adam(params, lr=a.learning_rate)]
        return [
            adam(self.policy.actor_parameters(), lr=a.learning_rate),
            adam(self.policy.critic_parameters(), lr=a.value_learning_rate),
        ]

    def begin_rollout(self) -> None:
        if self.algo.batch == "episodes":  # every batch starts fresh episodes
            self.collector.reset()
            self.reward_scaler.returns.zero_()

    @property
    def max_iterations(self) -> int:
        # An episode batch takes at least one step per sub-env; the step budget ends the run.
        return self.step_budget // self.num_envs if self.algo.batch == "episodes" else self.num_iterations

    def rollout_finished(self, ended: np.ndarray) -> bool:
        return self.algo.batch == "episodes" and bool(ended.all())

    def compute_targets(self, b: TensorDict, last_value: Tensor) -> None:
        done = b["terminated"] | b["truncated"]
        bootstrap = torch.zeros_like(b["reward"])
        if self.learned_value:  # a time limit is not the end of the task: complete the return with V
            bootstrap = torch.where(b["truncated"], b["final_value"], bootstrap)
        if self.algo.batch == "episodes":
            b["mask"].copy_(first_episode_mask(done[: self.steps_taken], done.shape[0]))
        elif self.algo.partial_episodes == "bootstrap":
            bootstrap[-1] = torch.where(done[-1], bootstrap[-1], last_value)
            b["mask"].fill_(1.0)
        else:
            b["mask"].copy_(complete_episode_mask(done))
        returns = reward_to_go(b["reward"], b["terminated"], b["truncated"], bootstrap, self.algo.gamma)
        b["return"].copy_(returns)
        b["advantage"].copy_(returns - b["value"] if self.learned_value else returns)

    def compute_loss(self, batch: TensorDict) -> dict[str, Tensor | None]:
        a, mask = self.algo, batch["mask"]
        n = mask.sum().clamp_min(1.0)
        weight = batch["advantage"]
        if a.baseline == "mean":
            weight = weight - (mask * weight).sum() / n
        if a.normalize_returns:
            weight = normalize(weight, mask=mask.bool())
        joint_critic = self.learned_value and not self.separate_critic
        sequences = self.sequences(batch)
        if joint_critic:
            dist, value = self.policy(batch["obs"], sequences)
        else:  # no critic in this loss: skip its forward pass
            dist, value = self.policy.distribution(batch["obs"], sequences), None
        entropy = dist.entropy()
        terms = reinforce_loss(dist.log_prob(batch["action"]), weight, mask, entropy)
        loss = terms["loss_policy"] + a.ent_coef * terms["loss_entropy"]
        value_loss = None
        if joint_critic:
            value_loss = (mask * (value - batch["return"]).pow(2)).sum() / n
            loss = loss + a.vf_coef * value_loss
        optimizers = self.optimizers()
        policy_opt = optimizers[0] if isinstance(optimizers, list) else optimizers
        policy_opt.zero_grad()
        self.manual_backward(loss)
        if a.max_grad_norm is not None:
            self.clip_gradients(policy_opt, a.max_grad_norm, "norm")
        policy_opt.step()
        if self.separate_critic:
            # Complete episodes only: a feedforward critic regresses on their steps alone; a recurrent one replays
            # whole chunks and weighs the rest 0.
            recurrent = sequences is not None
            value_loss = self.regress_value(
                optimizers[1],
                batch if recurrent else batch[mask.bool()],
                a.value_epochs,
                a.value_batch_size,
                a.max_grad_norm,
                weight=mask if recurrent else None,
            )
        return {
            "loss": None,  # steps taken above
            "policy_loss": terms["loss_policy"],
            "value_loss": value_loss,
            "entropy": -terms["loss_entropy"],
            "complete_fraction": mask.mean(),
        }

"""The three text algorithms as targets (after collection) and losses (per minibatch), on ``[B, T]`` token tensors.

Each loss is one of pgkit's existing pure loss functions, the ones the gymnasium algorithms use: a completion is an
episode and a token is an action.

- GRPO/GSPO: group-relative advantages (:func:`pgkit.ops.group_advantages`) and :func:`grpo_loss`, TRL's loss.
- RLOO: leave-one-out advantages (:func:`pgkit.ops.leave_one_out_advantages`) and REINFORCE's
  :func:`reinforce_loss` over the generated tokens: one gradient step per batch.
- PPO: TRL's ``PPOTrainer`` recipe. The score is the reward of the last generated token, and every generated token
  also pays ``-kl_coef * (log pi_old - log pi_ref)``. Advantages are GAE over tokens from the value head's
  estimates (:func:`pgkit.ops.advantages`), whitened over the generated tokens, and the loss is :func:`ppo_loss`
  with masked means.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pgkit.algorithms.grpo import grpo_loss
from pgkit.algorithms.ppo import ppo_loss
from pgkit.algorithms.reinforce import reinforce_loss
from pgkit.ops import advantages, group_advantages, leave_one_out_advantages, normalize


def sequence_advantages(algo: Any, scores: Tensor, group_size: int) -> Tensor:
    """GRPO's or RLOO's advantage of each completion, ``[B]`` (completions grouped by prompt)."""
    grouped = scores.view(-1, group_size)
    if algo.name == "grpo":
        return group_advantages(grouped, algo.baseline, algo.scale_rewards).reshape(-1)
    out = leave_one_out_advantages(grouped).reshape(-1)
    return normalize(out) if algo.normalize_advantage else out


def token_targets(algo: Any, scores: Tensor, old_log_prob: Tensor, ref_log_prob: Tensor | None, value: Tensor,
                  mask: Tensor, last: Tensor) -> tuple[Tensor, Tensor]:
    """PPO's ``(advantage, return)`` per token, ``[B, T]``; ``last[b]`` is the index of row b's last generated
    token, which receives the score and ends the episode."""
    rows = torch.arange(mask.shape[0], device=mask.device)
    kl = (old_log_prob - ref_log_prob) * mask if ref_log_prob is not None else torch.zeros_like(mask)
    reward = -algo.kl_coef * kl
    reward[rows, last] += scores.to(reward.dtype)
    positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    first = torch.where(mask.bool(), positions, mask.shape[1]).amin(-1, keepdim=True)
    # From the first generated token to the last; an env's observation tokens in between are states too (the
    # value there bootstraps the turn before), they just are not actions.
    inside = ((positions >= first) & (positions <= last.unsqueeze(1))).to(value.dtype)
    value = value * inside
    next_value = torch.cat([value[:, 1:], torch.zeros_like(value[:, :1])], dim=1)
    end = positions >= last.unsqueeze(1)  # the episode's end, and the padding after it
    advantage = advantages(reward, value, next_value, algo.gamma, algo.gae_lambda, terminated=end, done=end)
    advantage = advantage * inside
    returns = advantage + value
    return normalize(advantage, mask=mask.bool()), returns


def text_loss(algo: Any, batch: dict[str, Tensor], beta: float, max_length: int,
              steps_per_minibatch: float) -> dict[str, Tensor]:
    """The algorithm's loss on a minibatch of completions; ``batch`` holds ``[B, T]`` tensors ``log_prob``,
    ``old_log_prob``, ``entropy``, ``mask`` (and ``ref_log_prob``, ``advantage``, ``value``, ``old_value``,
    ``return`` as the algorithm needs)."""
    mask, log_prob, entropy = batch["mask"], batch["log_prob"], batch["entropy"]
    if algo.name == "grpo":
        ref = batch.get("ref_log_prob", batch["old_log_prob"])
        terms = grpo_loss(
            log_prob.T, batch["old_log_prob"].T, ref.T, batch["advantage"], mask.T, entropy.T, epsilon=algo.epsilon,
            epsilon_high=algo.epsilon if algo.epsilon_high is None else algo.epsilon_high, beta=beta,
            ent_coef=algo.ent_coef, loss_type=algo.loss_type, importance_sampling_level=algo.importance_sampling_level,
            max_length=max_length, steps_per_minibatch=steps_per_minibatch,
        )
        if "ref_log_prob" not in batch:  # no reference policy (beta 0): no KL to report
            terms.pop("kl")
        return terms
    if algo.name == "rloo":
        weight = batch["advantage"].unsqueeze(1).expand_as(log_prob)
        terms = reinforce_loss(log_prob, weight, mask, entropy)
        terms["loss"] = terms["loss_policy"] + algo.ent_coef * terms["loss_entropy"]
        return _as_logged(terms)
    terms = ppo_loss(log_prob, batch["old_log_prob"], batch["advantage"], batch["value"], batch["old_value"],
                     batch["return"], entropy, algo.clip_range, algo.cliprange_value, "max", mask=mask)
    terms["loss"] = terms["loss_policy"] + algo.vf_coef * terms["loss_value"] + algo.ent_coef * terms["loss_entropy"]
    return _as_logged(terms)


def _as_logged(terms: dict[str, Tensor]) -> dict[str, Tensor]:
    """The loss functions' terms under the names the gymnasium modules log them by (``train/policy_loss``,
    ``train/value_loss``, ``train/entropy``), so one metric means one thing in both worlds."""
    renamed = {"loss_policy": "policy_loss", "loss_value": "value_loss"}
    out = {renamed.get(k, k): v for k, v in terms.items() if k != "loss_entropy"}
    out["entropy"] = -terms["loss_entropy"].detach()
    return out


__all__ = ["sequence_advantages", "text_loss", "token_targets"]

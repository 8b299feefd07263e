"""GRPO (Shao et al. 2024, DeepSeekMath) and GSPO (Zheng et al. 2025) for gymnasium environments. No critic.

One iteration samples ``P = env.num_envs / group_size`` start states and runs a group of ``group_size`` episodes
from each: every member of a group is reset with the same seed. Each episode gets one score (its return, or a
reward computer's output), advantages are measured against the group (:func:`pgkit.ops.group_advantages`), and the
policy takes ``num_iterations`` passes of clipped-ratio updates against the sampling policy, with a k3 KL penalty to
a reference policy. Option names and meanings follow TRL's ``GRPOTrainer``.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import numpy as np
import torch
from tensordict import TensorDict
from torch import Tensor

from pgkit.algorithms.base import OnPolicyModule
from pgkit.algorithms.batching import chunk_rows
from pgkit.algorithms.common import adam
from pgkit.algorithms.configs import GroupPolicyOptions, GRPOConfig, LossType
from pgkit.errors import ConfigError
from pgkit.ops import clipped_surrogate, group_advantages, kl_k3, pareto_scores, relative_scores, sequence_ratio


# ------------------------------------------------------------------------------------------------------------ loss
def aggregate(
    per_step: Tensor, mask: Tensor, loss_type: LossType, max_length: int, steps_per_minibatch: float
) -> Tensor:
    """Reduce a ``[T, B]`` per-step loss over the steps in ``mask``, as TRL's ``loss_type``.

    ``grpo``: mean over each episode's steps, then over episodes. ``bnpo``: mean over all steps of the minibatch.
    ``dr_grpo``: sum over ``B * max_length`` (a constant, so no length bias). ``dapo``: sum over the mean number
    of steps per minibatch in the whole batch (TRL divides by the batch's step count and accumulates gradients;
    here each minibatch steps the optimizer, so the count is shared among the minibatches).
    """
    total = (per_step * mask).sum()
    if loss_type == "grpo":
        return ((per_step * mask).sum(0) / mask.sum(0).clamp_min(1.0)).mean()
    if loss_type == "bnpo":
        return total / mask.sum().clamp_min(1.0)
    if loss_type == "dr_grpo":
        return total / (per_step.shape[1] * max_length)
    return total / max(steps_per_minibatch, 1.0)


def grpo_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    ref_log_prob: Tensor,
    advantage: Tensor,
    mask: Tensor,
    entropy: Tensor,
    *,
    epsilon: float,
    epsilon_high: float,
    beta: float,
    ent_coef: float,
    loss_type: LossType,
    importance_sampling_level: Literal["token", "sequence"],
    max_length: int,
    steps_per_minibatch: float,
) -> dict[str, Tensor]:
    """The GRPO/GSPO loss on ``[T, B]`` steps of ``B`` episodes, with one advantage per episode (``[B]``).

    Per step: ``-min(r A, clip(r, 1 - epsilon, 1 + epsilon_high) A) + beta * k3(log pi_ref - log pi)
    - ent_coef * entropy``, reduced by :func:`aggregate`. The ratio ``r`` is per step (``token``) or, for GSPO
    (``sequence``), one per episode: ``exp(mean over its steps of (log pi - log pi_old))``.
    """
    if importance_sampling_level == "sequence":
        length = mask.sum(0)
        ratio = sequence_ratio((log_prob * mask).sum(0), (old_log_prob * mask).sum(0), length).expand_as(log_prob)
    else:
        ratio = (log_prob - old_log_prob).exp()
    adv = advantage.unsqueeze(0).expand_as(log_prob)
    kl = kl_k3(ref_log_prob - log_prob)
    per_step = -clipped_surrogate(ratio, adv, epsilon, epsilon_high) - ent_coef * entropy
    if beta:
        per_step = per_step + beta * kl
    loss = aggregate(per_step, mask, loss_type, max_length, steps_per_minibatch)
    with torch.no_grad():
        n = mask.sum().clamp_min(1.0)
        clipped = ((ratio < 1 - epsilon) & (adv < 0)) | ((ratio > 1 + epsilon_high) & (adv > 0))
        return {
            "loss": loss,
            "kl": (kl * mask).sum() / n,
            "clip_fraction": (clipped.float() * mask).sum() / n,
            "entropy": (entropy * mask).sum() / n,
        }


def adapt_beta(beta: float, kl: float, target: float, low: float, high: float) -> float:
    """ruvllm's adaptive KL weight: x1.5 when ``kl > 1.5 target``, /1.5 when ``kl < 0.5 target``, within
    ``[low, high]``."""
    if kl > 1.5 * target:
        beta *= 1.5
    elif kl < 0.5 * target:
        beta /= 1.5
    return min(max(beta, low), high)


class ReferenceSync:
    """TRL's ``SyncRefModelCallback`` on pgkit's modules: after the optimizer step that makes ``global_step`` a
    multiple of ``ref_model_sync_steps``, ``ref <- alpha * policy + (1 - alpha) * ref`` over the parameters."""

    def __init__(self, options: GroupPolicyOptions) -> None:
        self.enabled = options.sync_ref_model
        self.alpha, self.every = options.ref_model_mixup_alpha, options.ref_model_sync_steps
        self.synced_at = -1

    @torch.no_grad()
    def after_step(self, global_step: int, reference: torch.nn.Module | None, policy: torch.nn.Module) -> None:
        """Call after every minibatch with the optimizer steps taken so far; a skipped step leaves ``global_step``
        unchanged, so it cannot sync twice."""
        if not self.enabled or reference is None or global_step == 0 or global_step % self.every:
            return
        if global_step == self.synced_at:
            return
        self.synced_at = global_step
        for ref, cur in zip(reference.parameters(), policy.parameters(), strict=True):
            ref.lerp_(cur.to(ref.dtype), self.alpha)


# ---------------------------------------------------------------------------------------------------------- config
# ---------------------------------------------------------------------------------------------------------- module
class GRPO(OnPolicyModule):
    """GRPO/GSPO: groups of episodes from shared start states, group-relative advantages, no critic."""

    has_critic = False

    def __init__(self, config: dict, spaces: tuple[Any, Any] | None = None) -> None:
        super().__init__(config, spaces)
        self.algo: GRPOConfig = self.cfg.algorithm
        a = self.algo
        self.group_size = a.group_size
        self.num_groups = self.num_envs // a.group_size
        self.update_epochs, self.num_minibatches = a.num_iterations, a.num_minibatches
        self.epsilon_high = a.epsilon if a.epsilon_high is None else a.epsilon_high
        self.reference = copy.deepcopy(self.policy).requires_grad_(False)
        self.reference_sync = ReferenceSync(a)
        self.register_buffer("beta", torch.tensor(a.beta, dtype=torch.float64))
        self._objectives = np.zeros((self.num_envs, len(a.objectives)))
        self._scoring = np.ones(self.num_envs, dtype=bool)  # sub-envs still in the episode being scored
        self.group_metrics: dict[str, float] = {}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self.policy.actor_parameters(), lr=self.algo.learning_rate)

    # ------------------------------------------------------------------------------------------------- rollout
    def group_seeds(self) -> list[int]:
        """Reset seeds for this iteration: one per group, repeated for its members. A pure function of the run's
        seed, the rank and the iteration, so a resumed run draws the same start states."""
        entropy = [self.cfg.trainer.seed, self.global_rank, self.current_epoch]
        per_group = np.random.SeedSequence(entropy).generate_state(self.num_groups)
        return np.repeat(per_group, self.group_size).tolist()

    def begin_rollout(self) -> None:
        self.collector.reset(self.group_seeds())
        self.reset_observations = copy.deepcopy(self.collector.next_obs)  # for inspection: identical within a group
        self._objectives[:] = 0.0
        self._scoring[:] = True
        self._seen = [False] * len(self.algo.objectives)

    def rollout_finished(self, ended: np.ndarray) -> bool:
        return bool(ended.all())

    @property
    def max_iterations(self) -> int:
        # A batch takes at least one step per sub-env; the step budget ends the run.
        return self.step_budget // self.num_envs

    def observe_step(self, info: dict[str, Any], done: np.ndarray) -> None:
        # With same-step autoreset, an episode's last step reports its info under "final_info".
        final = info.get("final_info") or {}
        for k, key in enumerate(self.algo.objectives):
            values = np.zeros(self.num_envs)
            for source, rows in ((info, ~done), (final, done)):
                if key in source:
                    present = rows & source.get(f"_{key}", True)
                    values = np.where(present, np.asarray(source[key], dtype=np.float64), values)
                    self._seen[k] |= bool(present.any())
            self._objectives[:, k] += np.where(self._scoring, values, 0.0)
        self._scoring &= ~done

    def compute_targets(self, b: TensorDict, last_value: Tensor) -> None:
        a, T = self.algo, self.steps_taken
        done = (b["terminated"] | b["truncated"])[:T]
        in_first = (done.cumsum(0) - done.long()) == 0  # up to and including the first end (all, if none)
        mask = torch.zeros_like(b["mask"])
        mask[:T] = in_first.float()
        b["mask"].copy_(mask)
        returns = (b["reward"] * mask).sum(0).double().view(self.num_groups, self.group_size)
        if a.reward == "relative":
            scores = relative_scores(returns)
        elif a.reward == "pareto":
            for key, seen in zip(a.objectives, self._seen, strict=True):
                if not seen:
                    raise ConfigError(
                        f"config error: algorithm.objectives: the env's info has no key {key!r} in this rollout"
                    )
            objectives = torch.as_tensor(self._objectives, device=returns.device)
            scores = pareto_scores(objectives.view(self.num_groups, self.group_size, -1))
        else:
            scores = returns
        advantage = group_advantages(scores, a.baseline, a.scale_rewards)
        b["advantage"].copy_(advantage.reshape(1, -1).float() * mask)
        b["return"].copy_(scores.reshape(1, -1).float().expand_as(mask))
        group_std = scores.std(dim=1) if self.group_size > 1 else torch.zeros(self.num_groups)
        self.group_metrics = {
            "train/reward_mean": float(scores.mean()),
            "train/reward_std": float(scores.std()),
            "train/frac_reward_zero_std": float((group_std < 1e-8).double().mean()),
            "train/advantage_mean": float(advantage.mean()),
            "train/episode_return": float(returns.mean()),
        }

    # -------------------------------------------------------------------------------------------------- update
    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.rollout_metrics.update(self.group_metrics)
        self._steps_per_minibatch = float(self.buffer["mask"].sum()) / self.num_minibatches

    # Minibatches of whole episodes: the units are sub-envs, each one column of the rollout's used steps, laid out
    # env by env (so sequence-level ratios see all steps, and a recurrent policy replays each from its reset).
    def make_rows(self) -> None:
        self.rows = chunk_rows(self.buffer[: self.steps_taken], self.steps_taken)
        states = self.collector.sequence_states
        self.chunk_states = None if states is None else states[0]

    @property
    def rows_per_unit(self) -> int:
        return self.steps_taken

    @property
    def num_units(self) -> int:
        return self.num_envs

    def training_step(self, indices: Tensor, batch_idx: int) -> Tensor:
        terms = self.compute_loss(self.minibatch(indices.to(self.device)))
        self.accumulate(terms)
        return terms["loss"]

    def compute_loss(self, batch: TensorDict) -> dict[str, Tensor | None]:
        a = self.algo
        obs, action, sequences = batch["obs"], batch["action"], self.sequences(batch)

        def steps(x: Tensor) -> Tensor:  # rows (episode by episode) -> [T, B]
            return x.view(-1, self.steps_taken).T

        dist = self.policy.distribution(obs, sequences)
        with torch.no_grad():
            ref_log_prob = self.reference.distribution(obs, sequences).log_prob(action)
        terms = grpo_loss(
            steps(dist.log_prob(action)),
            steps(batch["log_prob"]),
            steps(ref_log_prob),
            steps(batch["advantage"])[0],  # one per episode; its first step always counts
            steps(batch["mask"]),
            steps(dist.entropy()),
            epsilon=a.epsilon,
            epsilon_high=self.epsilon_high,
            beta=float(self.beta),
            ent_coef=a.ent_coef,
            loss_type=a.loss_type,
            importance_sampling_level=a.importance_sampling_level,
            max_length=a.num_steps,
            steps_per_minibatch=self._steps_per_minibatch,
        )
        terms["beta"] = self.beta.clone()
        return terms

    def on_train_epoch_end(self) -> None:
        a = self.algo
        if a.adaptive_beta and self._count:
            kl = float(self.iteration_sums["kl"]) / self._count
            self.beta.fill_(adapt_beta(float(self.beta), kl, a.kl_target, a.beta_min, a.beta_max))
        super().on_train_epoch_end()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.reference_sync.after_step(self.global_step, self.reference, self.policy)

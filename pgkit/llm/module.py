"""``LanguageModule``: a Hugging Face causal LM trained by GRPO/GSPO, RLOO or PPO as a Lightning module.

One Lightning epoch is one iteration, as for gymnasium envs:

1. ``on_train_epoch_start`` samples ``prompts.per_iteration`` prompt records (a pure function of the seed, rank and
   iteration, so a resumed run draws the same ones), collects ``generation.group_size`` episodes for each
   (:class:`pgkit.llm.rollout.TextRollout`), scores them with the reward functions and computer, and takes the old
   log-probs under the sampling policy (and the reference's, and the value head's estimates, as the algorithm needs).
2. ``training_step`` takes every minibatch of every pass in one Lightning step (manual optimisation, so DDP still
   averages gradients in ``manual_backward``), with the loss from :mod:`pgkit.llm.updates`.
3. ``on_train_epoch_end`` updates the adaptive beta (the reference syncs after optimizer steps, as in TRL), logs
   the iteration (``train/reward_mean``, each function's mean, reward std, KL, completion lengths, tokens per
   second), a table of sample completions every ``samples_every_n_iterations``, and evaluates on the held-out
   prompts every ``eval.every_n_iterations``.

Checkpoints hold the model (or its LoRA), the value head, the reference, the optimizer and the counters.
"""

from __future__ import annotations

import random
import sys
import time
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from pgkit.algorithms.grpo import ReferenceSync, adapt_beta
from pgkit.algorithms.metrics import IterationMetrics
from pgkit.algorithms.progress import Progress
from pgkit.checkpoints import checkpoint_metadata, trained_state_keys
from pgkit.evaluation import EvalResult
from pgkit.llm.config import LanguageExperimentConfig
from pgkit.llm.envs import env_factory
from pgkit.llm.model import (
    ValueHead,
    add_lora,
    frozen_copy,
    hidden_size,
    load_model,
    load_tokenizer,
    token_log_probs,
)
from pgkit.llm.rewards import RewardFunctions, compute_scores
from pgkit.llm.rollout import Episodes, TextRollout, columns_of
from pgkit.llm.tasks import load_records, split
from pgkit.llm.updates import sequence_advantages, text_loss, token_targets

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LanguageModule(IterationMetrics, Progress, L.LightningModule):
    """A causal LM policy, its text rollouts and its updates (see the module docstring)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.cfg = c = LanguageExperimentConfig.model_validate(config)
        self.algo = c.algorithm
        self.tokenizer = load_tokenizer(c.model.path, c.model.gguf_file)
        model = load_model(c.model.path, c.model.gguf_file, _DTYPES[c.model.dtype], self.tokenizer, c.trainer.seed)
        if c.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if c.model.lora is not None:
            lora = c.model.lora
            model = add_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules)
        self.policy = model
        #: A LoRA run's frozen base weights (in the policy and its reference copy) stay out of checkpoints.
        self.frozen_prefixes = ("policy.", "reference.") if c.model.lora is not None else ()
        self.strict_loading = c.model.lora is None
        self.value_head = ValueHead(hidden_size(model)) if self.algo.name == "ppo" else None
        beta = getattr(self.algo, "beta", 0.0)
        needs_reference = (self.algo.name == "grpo" and (beta > 0 or self.algo.adaptive_beta)) or (
            self.algo.name == "ppo" and self.algo.kl_coef > 0)
        self.reference = frozen_copy(model) if needs_reference else None
        self.reference_sync = ReferenceSync(self.algo) if self.algo.name == "grpo" else None
        self.rewards = RewardFunctions(c.reward.functions, c.reward.timeout_s)
        self.train_records, self.eval_records = split(
            load_records(c.prompts.file, c.prompts.task, c.prompts.task_kwargs), c.prompts.eval_prompts)
        self.rollout = TextRollout(self.tokenizer, env_factory(c.env.id, c.env.kwargs), c.env.max_turns,
                                   c.generation.max_new_tokens, c.generation.top_p, c.prompts.chat_template,
                                   c.prompts.system_prompt)
        self.register_buffer("env_steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("beta", torch.tensor(float(beta), dtype=torch.float64))
        self.automatic_optimization = False
        self.has_critic = self.value_head is not None
        self.batch_size, self.num_iterations = c.batch_size, c.num_iterations
        self.group_size = c.generation.group_size
        self.episode_returns: list[float] = []
        self.episode_steps: list[int] = []
        self.episode_times: list[float] = []  # time.perf_counter() at the end of the rollout in which each finished
        self.last_metrics: dict[str, float] = {}
        self.rollout_metrics: dict[str, float] = {}
        self.episodes: Episodes | None = None
        self.data: dict[str, Tensor] = {}
        self.values: Tensor | None = None  # this iteration's reward-function values, [B, functions]
        self._fit_start = (0.0, 0)
        self.forward_pass = None  # the policy's compiled forward, with trainer.compile
        self._reported_unscored = False
        self.start_metrics()

    # ----------------------------------------------------------------------------------------------- plumbing
    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if self.value_head is not None:
            params += list(self.value_head.parameters())
        return torch.optim.AdamW(params, lr=self.algo.learning_rate, weight_decay=self.algo.weight_decay)

    def train_dataloader(self) -> DataLoader:
        return DataLoader([0], batch_size=None)  # one Lightning step per iteration: the updates loop inside it

    def on_fit_start(self) -> None:
        self._fit_start = (time.perf_counter(), int(self.env_steps))
        setting = self.cfg.trainer.compile
        if (self.device.type == "cuda") if setting == "auto" else bool(setting):
            # The update's forward passes, compiled with dynamic shapes (completion lengths vary); sampling stays
            # eager (generate's cache changes shape every token).
            self.forward_pass = torch.compile(self.policy.forward, dynamic=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Nothing lives between iterations but what the checkpoint holds (prompts are drawn per iteration). A LoRA
        # run keeps only what trains (the adapters, the value head, the counters): the frozen base model is named
        # by model.path and loaded from there, so a checkpoint is megabytes, not the whole model again.
        base = None
        if self.cfg.model.lora is not None:
            keep = set(trained_state_keys(self))
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
            base = self.cfg.model.path
        checkpoint["pgkit"] = checkpoint_metadata(getattr(self.logger, "run_id", None),
                                                  checkpoint["hyper_parameters"]["config"], base_model=base)

    @property
    def progress(self) -> float:
        """Fraction of the step budget done."""
        return int(self.env_steps) / self.step_budget

    # ---------------------------------------------------------------------------------------------- rollout
    def draw_records(self) -> list[dict[str, Any]]:
        """This iteration's prompts, each repeated ``group_size`` times (consecutive: one group per prompt)."""
        rng = random.Random(self.iteration_seed(2))
        chosen = rng.sample(self.train_records, min(self.cfg.prompts.per_iteration, len(self.train_records)))
        while len(chosen) < self.cfg.prompts.per_iteration:  # fewer records than prompts per iteration
            chosen.append(rng.choice(self.train_records))
        return [record for record in chosen for _ in range(self.group_size)]

    def score(self, episodes: Episodes, check: bool = False) -> tuple[Tensor, Tensor]:
        """``(values [B, functions], weighted reward [B])`` of finished episodes."""
        values = self.rewards(episodes.prompts, episodes.completions, columns_of(episodes.records),
                              int(self.env_steps), self.progress if self._trainer else 0.0, check=check)
        unscored = torch.isnan(values).all(1)
        if bool(unscored.any()) and not self._reported_unscored:
            self._reported_unscored = True  # once a run; train/reward_not_applicable counts them all
            first = int(unscored.nonzero()[0])
            print(f"pgkit: no reward function applies to a completion of prompt {str(episodes.prompts[first])!r:.80} "
                  "(every one returned None); it scores 0, as in TRL (train/reward_not_applicable counts them)",
                  file=sys.stderr)
        return values, self.rewards.weighted(values)

    @torch.no_grad()
    def log_probs(self, model, episodes: Episodes, **extra: bool) -> dict[str, Tensor]:
        """Token log-probs of ``episodes`` under ``model`` at the sampling temperature, in minibatch-sized chunks."""
        chunks = []
        size = max(1, self.batch_size // getattr(self.algo, "num_minibatches", 1))
        for start in range(0, episodes.input_ids.shape[0], size):
            part = slice(start, start + size)
            chunks.append(token_log_probs(model, episodes.input_ids[part], episodes.attention_mask[part],
                                          episodes.keep, self.cfg.generation.temperature, **extra))
        return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}

    def on_train_epoch_start(self) -> None:
        self.start_metrics()
        self.seed_iteration()
        self.anneal_learning_rates()
        episodes = self.rollout.collect(self.policy, self.draw_records(), self.cfg.generation.temperature)
        values, reward = self.score(episodes)
        scores = compute_scores(values, self.rewards.weights, self.cfg.reward.computer, self.group_size).float()
        scores = scores.to(self.device)
        old = self.log_probs(self.policy, episodes, with_hidden=self.value_head is not None)
        data = {"mask": episodes.mask, "old_log_prob": old["log_prob"]}
        if self.reference is not None:
            data["ref_log_prob"] = self.log_probs(self.reference, episodes)["log_prob"]
        if self.value_head is not None:
            with torch.no_grad():
                data["old_value"] = self.value_head(old["hidden"])
            advantage, returns = token_targets(self.algo, scores, data["old_log_prob"], data.get("ref_log_prob"),
                                               data["old_value"], episodes.mask, episodes.last_generated())
            data.update(advantage=advantage, value=data["old_value"], **{"return": returns})
        else:
            data["advantage"] = sequence_advantages(self.algo, scores, self.group_size)
        self.episodes, self.data, self.values = episodes, data, values
        self.record_rollout(episodes, values, reward, scores, data)

    def record_rollout(self, episodes: Episodes, values: Tensor, reward: Tensor, scores: Tensor,
                       data: dict[str, Tensor]) -> None:
        """Counters and this iteration's rollout metrics."""
        n = reward.shape[0]
        self.env_steps += n * self.trainer.world_size
        steps = int(self.env_steps)
        self.episode_returns.extend(reward.tolist())
        self.episode_steps.extend([steps] * n)
        self.episode_times.extend([time.perf_counter()] * n)
        lengths = episodes.lengths
        group_std = reward.view(-1, self.group_size).std(dim=1) if self.group_size > 1 else torch.zeros(1)
        ends = episodes.input_ids[:, -episodes.keep :][torch.arange(n), episodes.last_generated().clamp(min=0)]
        elapsed = time.perf_counter() - self._fit_start[0]
        metrics = {
            "train/reward_mean": float(reward.mean()),
            "train/reward_std": float(reward.std()) if n > 1 else 0.0,
            "train/frac_reward_zero_std": float((group_std < 1e-8).double().mean()),
            "train/score_mean": float(scores.mean()),
            "train/advantage_mean": float((data["advantage"] * (episodes.mask if data["advantage"].dim() == 2
                                                                 else 1)).mean()),
            "train/completion_length_mean": float(lengths.mean()),
            "train/completion_length_min": float(lengths.min()),
            "train/completion_length_max": float(lengths.max()),
            "train/clipped_ratio": float((ends != self.rollout.eos).float().mean()),
            "rollout/episode_return": float(reward.mean()),
            "time/tokens_per_second": episodes.generated_tokens / max(episodes.seconds, 1e-9),
            "time/sps": (steps - self._fit_start[1]) / max(elapsed, 1e-9),
            "train/learning_rate": self.trainer.optimizers[0].param_groups[0]["lr"],
        }
        for name, column in zip(self.rewards.names, values.T, strict=True):
            if not bool(torch.isnan(column).all()):  # over the completions it applies to
                metrics[f"train/reward/{name}"] = float(column.nanmean())
        metrics["train/reward_not_applicable"] = float(torch.isnan(values).all(1).double().mean())
        if "ref_log_prob" in data:
            metrics["train/ref_kl"] = float(((data["old_log_prob"] - data["ref_log_prob"]) * episodes.mask).sum()
                                            / episodes.mask.sum().clamp_min(1.0))
        self.rollout_metrics = metrics

    # ---------------------------------------------------------------------------------------------- update
    def training_step(self, batch: Any, batch_idx: int) -> None:
        algo, episodes, data = self.algo, self.episodes, self.data
        optimizer = self.optimizers()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        passes = {"grpo": getattr(algo, "num_iterations", 1), "ppo": getattr(algo, "update_epochs", 1)}
        passes = passes.get(algo.name, 1)
        minibatches = getattr(algo, "num_minibatches", 1)
        rows = episodes.input_ids.shape[0]
        steps_per_minibatch = float(episodes.mask.sum()) / minibatches
        generator = self.index_generator()
        for _ in range(passes):
            for index in torch.randperm(rows, generator=generator).view(minibatches, -1):
                index = index.to(self.device)
                out = token_log_probs(self.policy, episodes.input_ids[index], episodes.attention_mask[index],
                                      episodes.keep, self.cfg.generation.temperature, with_entropy=True,
                                      with_hidden=self.value_head is not None, forward=self.forward_pass)
                minibatch = {k: v[index] for k, v in data.items()}
                minibatch.update(log_prob=out["log_prob"], entropy=out["entropy"])
                if self.value_head is not None:
                    minibatch["value"] = self.value_head(out["hidden"])
                terms = text_loss(algo, minibatch, float(self.beta), self.cfg.generation.max_new_tokens,
                                  steps_per_minibatch)
                if self.skip_batch(terms["loss"]):
                    continue
                optimizer.zero_grad()
                self.manual_backward(terms["loss"])
                if algo.max_grad_norm is not None:
                    terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, algo.max_grad_norm)
                    if self.skip_batch(terms["grad_norm"]):
                        continue
                self.accumulate({k: v for k, v in terms.items() if k != "psi" and v.dim() == 0})
                optimizer.step()
                if self.reference_sync is not None:
                    self.reference_sync.after_step(self.global_step, self.reference, self.policy)

    def on_train_epoch_end(self) -> None:
        algo = self.algo
        if algo.name == "grpo" and algo.adaptive_beta and self._count and "kl" in self.iteration_sums:
            kl = float(self.iteration_sums["kl"]) / self._count
            self.beta.fill_(adapt_beta(float(self.beta), kl, algo.kl_target, algo.beta_min, algo.beta_max))
        metrics = {**self.rollout_metrics, **self.update_metrics()}
        if algo.name == "grpo":
            metrics["train/beta"] = float(self.beta)
        iteration, last = self.finish_iteration(metrics)
        if self.logger is not None:
            samples = self.cfg.samples_every_n_iterations
            if samples and (iteration % samples == 0 or last) and self.trainer.is_global_zero:
                self.log_samples(iteration)

    def log_samples(self, iteration: int, count: int = 8) -> None:
        """A table of sample completions (prompt, completion, each reward) as an MLflow artifact."""
        episodes, values = self.episodes, self.values
        reward = self.rewards.weighted(values)
        rows = list(range(0, len(episodes.records), max(1, len(episodes.records) // count)))[:count]
        table: dict[str, list[Any]] = {
            "prompt": [str(episodes.prompts[i]) for i in rows],
            "completion": [str(episodes.completions[i]) for i in rows],
            "reward": [float(reward[i]) for i in rows],
        }
        for k, name in enumerate(self.rewards.names):
            table[name] = [float(values[i, k]) for i in rows]
        self.logger.experiment.log_table(self.logger.run_id, data=table,
                                         artifact_file=f"samples/iteration-{iteration:05d}.json")

    # ---------------------------------------------------------------------------------------------- evaluation
    def evaluate_prompts(self, records: list[dict[str, Any]] | None = None, temperature: float | None = None,
                         seed: int = 0) -> tuple[EvalResult, Episodes]:
        """The weighted reward of one episode per held-out record (greedy by default)."""
        records = self.eval_records if records is None else records
        temperature = self.cfg.eval.temperature if temperature is None else temperature
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            episodes = self.rollout.collect(self.policy, records, temperature)
        _, reward = self.score(episodes)
        return EvalResult(reward.tolist(), episodes.lengths.long().tolist()), episodes

    def run_evaluation(self) -> EvalResult:
        """Evaluate on the held-out prompts (at least one)."""
        if not self.eval_records:
            return EvalResult([float("nan")], [0])
        return self.evaluate_prompts(seed=self.cfg.trainer.seed)[0]

    def probe_rewards(self) -> None:
        """Call every reward function once on two held-out-or-training records with empty completions: a function
        that does not import, raises, or returns the wrong length or non-numbers is bad input, before training."""
        records = (self.train_records + self.eval_records)[:2]
        prompts = [r["prompt"] for r in records]
        completions = ["" if isinstance(p, str) else [{"role": "assistant", "content": ""}] for p in prompts]
        self.rewards(prompts, completions, columns_of(records), 0, 0.0, check=True)


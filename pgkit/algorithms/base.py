"""``OnPolicyModule``: the plumbing every on-policy algorithm shares, written once.

One Lightning epoch is one policy iteration:

1. ``on_train_epoch_start`` collects ``num_steps x num_envs`` transitions (:class:`pgkit.rollout.Collector`), then
   computes advantages and value targets once: GAE (:func:`pgkit.ops.gae`) or V-trace (:func:`pgkit.ops.vtrace`,
   refreshed at every pass over the batch, since the policy moves away from the one that acted).
2. The train dataloader yields minibatch *indices* of units: rows, or whole BPTT chunks for a recurrent policy
   (:mod:`pgkit.algorithms.batching`).
3. ``training_step`` gathers the minibatch and calls the subclass's ``compute_loss``; the named terms it returns
   are summed on-device and logged once per iteration, keyed by environment steps.
4. ``on_train_epoch_end`` logs rollout and update metrics and evaluates every ``eval.every_n_iterations``.

Subclasses implement ``compute_loss`` and ``configure_optimizers`` and nothing else of the loop. They evaluate the
policy on a minibatch with ``self.policy(batch["obs"], self.sequences(batch))``: the sequences are None for a
feedforward policy.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from tensordict import TensorDict
from torch import Tensor
from torch.utils.data import DataLoader

from pgkit.algorithms.batching import (
    MinibatchIndices,
    chunk_rows,
    chunk_state_rows,
    rows_to_steps,
    unit_rows,
)
from pgkit.algorithms.distributed import check_ranks_agree, iteration_totals
from pgkit.checkpoints import checkpoint_metadata
from pgkit.environments import RewardScaler
from pgkit.environments.actions import ActionAdapter
from pgkit.environments.observations import make_observation_processor
from pgkit.errors import TrainingError
from pgkit.evaluation import EVAL_SEED_OFFSET, EvalResult, evaluate
from pgkit.networks import ActorCritic
from pgkit.networks.fused import FusedForward
from pgkit.networks.recurrent import Sequences
from pgkit.ops import explained_variance, gae, vtrace
from pgkit.rollout import Collector

if TYPE_CHECKING:
    from pgkit.config import ExperimentConfig

__all__ = ["MinibatchIndices", "OnPolicyModule"]


class OnPolicyModule(L.LightningModule):
    """Shared base of the on-policy algorithms: rollout, advantages, minibatches, logging and checkpoint state.

    Everything that must survive a checkpoint is a parameter or buffer: the policy, the observation and reward
    normalisers, and the ``env_steps`` counter. ``config`` is the resolved experiment config as a plain dict; it
    is stored in the checkpoint's ``hyper_parameters``, so a checkpoint alone rebuilds the module.
    """

    #: Passes over the rollout per iteration, and minibatches per pass. Subclasses set these from their config.
    update_epochs: int = 1
    num_minibatches: int = 1
    #: Whether the critic estimates values worth reporting (``train/explained_variance``); GRPO has none.
    has_critic: bool = True
    #: Run all of an iteration's minibatches inside one Lightning training step, stepping the optimizer by hand
    #: (manual optimisation: DDP still averages gradients in ``manual_backward``). Lightning's per-batch machinery
    #: (hooks, closure, fetcher) costs about 1.8 ms a minibatch on CPU, more than PPO's minibatch of 64 itself.
    fused_minibatches: bool = False

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        from pgkit.config import ExperimentConfig

        self.save_hyperparameters(logger=False)
        self.cfg: ExperimentConfig = ExperimentConfig.model_validate(config)
        env_cfg, algo = self.cfg.env, self.cfg.algorithm
        probe = env_cfg.make_probe()
        self.observation_space, self.action_space = probe.observation_space, probe.action_space
        probe.close()

        self.policy = self.cfg.policy.init(self.observation_space, self.action_space)
        self.action_adapter = ActionAdapter(self.action_space, env_cfg.action_bounds)
        self.obs_normalizer = make_observation_processor(self.observation_space, env_cfg.obs_clip,
                                                         env_cfg.normalize_obs)
        self.observation_layout = self.obs_normalizer.layout
        self.reward_scaler = RewardScaler(env_cfg.num_envs, algo.gamma, env_cfg.reward_clip, env_cfg.normalize_reward)
        self.register_buffer("env_steps", torch.zeros((), dtype=torch.int64))

        self.num_envs = env_cfg.num_envs
        self.batch_size = algo.num_steps * env_cfg.num_envs
        self.num_iterations = self.cfg.num_iterations
        #: BPTT chunk length of a recurrent policy (None: feedforward, every row is a unit).
        self.horizon: int | None = (algo.bptt_horizon or algo.num_steps) if self.policy.recurrent else None
        self.collector = Collector(self, self.horizon or algo.num_steps)
        self.buffer: TensorDict | None = None
        self.rows: TensorDict | None = None  # the buffer as training rows (see batching)
        self.chunk_states: Tensor | None = None  # [chunks, S]: each chunk's stored recurrent state
        self.last_value: Tensor | None = None
        self.episode_returns: list[float] = []  # every training episode finished in this process, in order
        self.episode_steps: list[int] = []  # env_steps at the end of the iteration in which each one finished
        self.last_metrics: dict[str, float] = {}
        self._rows: dict[tuple[str, ...], list[Tensor]] = {}
        self._count = 0
        self._skipped = 0  # minibatches skipped this iteration (trainer.skip_nonfinite_batches)
        self._fit_start_time = 0.0
        self._fit_start_steps = 0
        self.rollout_metrics: dict[str, float] = {}
        self._graph_steps = False  # compiled with CUDA graphs (set by setup_compile)
        self._compiled = False
        self.resume_from: Path | None = None  # set by fit(resume=...): restore the env state saved with it
        #: Eager feedforward rollouts act through a fused copy of the acting network taken at the rollout's start
        #: (None: through the network itself). A plain function, never a module, so no part of the module's state.
        self.rollout_forward: FusedForward | None = None

    # ----------------------------------------------------------------------------------------------- environments
    @property
    def envs(self) -> Any:
        """This process's vector env (None outside ``fit``)."""
        return self.collector.envs

    @property
    def steps_taken(self) -> int:
        """Rows of the buffer the last rollout filled (fewer than ``num_steps`` when it stopped early)."""
        return self.collector.steps_taken

    def setup(self, stage: str) -> None:
        if stage != "fit" or self.collector.envs is not None:
            return
        self.collector.open(self.global_rank)
        if self.resume_from is not None:
            self.collector.restore(self.resume_from, self.global_rank)

    def teardown(self, stage: str) -> None:
        self.collector.close()

    def save_env_state(self, checkpoint: Path) -> None:
        """Write this rank's envs, next observation and recurrent state next to ``checkpoint``."""
        self.collector.save(checkpoint, self.global_rank)

    # ---------------------------------------------------------------------------------------------------- rollout
    def collect_rollout(self) -> list[tuple[float, int]]:
        """Fill ``self.buffer`` with one rollout and its advantages; return the (return, length) of each episode
        that ended during it."""
        if self.buffer is None:
            self.buffer = self.collector.allocate(self.cfg.algorithm.num_steps)
        with torch.inference_mode():
            episodes = self.collector.collect(self.buffer)
            self.last_value = self.collector.last_value()
            self.compute_targets(self.buffer, self.last_value)
        return episodes

    @property
    def acting_policy(self) -> ActorCritic:
        """The network that acts and estimates values during rollouts (V-MPO overrides it with its target)."""
        return self.policy

    def begin_rollout(self) -> None:
        """Called before each rollout (REINFORCE's episode batches and GRPO's groups reset the envs here)."""

    def rollout_finished(self, ended: np.ndarray) -> bool:
        """Whether to stop the rollout early; ``ended[i]`` says sub-env ``i`` has ended an episode in it."""
        return False

    def observe_step(self, info: dict[str, Any], done: np.ndarray) -> None:
        """Called after every env step with the vector env's ``info`` and ``terminated | truncated``."""

    def compute_targets(self, b: TensorDict, last_value: Tensor) -> None:
        """Fill ``b["advantage"]`` and ``b["return"]`` (and ``b["mask"]`` if some steps must not count).

        The default is GAE: ``next_value`` is the next step's value inside an episode, the real final observation's
        value at a truncation, and ``last_value`` (the value after the last step) at the end of the rollout. With
        ``advantage: vtrace`` the targets are V-trace's, computed once the training rows exist
        (:meth:`refresh_vtrace`).
        """
        algo = self.cfg.algorithm
        if algo.advantage == "vtrace":
            return
        advantage, ret = gae(
            b["reward"], b["value"], self.next_values(b, b["value"], last_value), b["terminated"], b["truncated"],
            algo.gamma, algo.gae_lambda,
        )
        b["advantage"].copy_(advantage)
        b["return"].copy_(ret)

    @staticmethod
    def next_values(b: TensorDict, value: Tensor, last_value: Tensor) -> Tensor:
        """``V(x_{t+1})`` for every step: the next step's value, the real final observation's after a truncation,
        ``last_value`` after the last step."""
        next_value = torch.cat([value[1:], last_value.unsqueeze(0)])
        return torch.where(b["truncated"], b["final_value"], next_value)

    @torch.no_grad()
    def refresh_vtrace(self) -> None:
        """V-trace advantages and targets from the behaviour log-probs of the rollout against the current policy's,
        with the current critic's values of the rollout's steps (the bootstrap values after the last step and at
        truncations are the acting critic's, as the rollout computed them). Written into the buffer and the rows."""
        algo, b, rows = self.cfg.algorithm, self.buffer, self.rows
        states = None if self.chunk_states is None else chunk_state_rows(
            self.chunk_states, torch.arange(self.chunk_states.shape[0], device=self.device), self.horizon
        )
        sequences = None if states is None else Sequences(rows["sequence_start"], states)
        dist, value = self.policy(rows["obs"], sequences)
        T, N = b.batch_size
        log_rho = rows_to_steps(dist.log_prob(rows["action"]) - rows["log_prob"], T, N, self.horizon)
        value = rows_to_steps(value, T, N, self.horizon)
        advantage, target = vtrace(
            log_rho, b["reward"], value, self.next_values(b, value, self.last_value), b["terminated"],
            b["truncated"], algo.gamma, algo.vtrace_rho_clip, algo.vtrace_c_clip, algo.gae_lambda,
        )
        b["advantage"].copy_(advantage)
        b["return"].copy_(target)
        if self.horizon is not None:  # the rows are a rearranged copy: update them too
            fresh = chunk_rows(b.select("advantage", "return", "episode_start"), self.horizon)
            rows["advantage"], rows["return"] = fresh["advantage"], fresh["return"]

    # -------------------------------------------------------------------------------------------- training rows
    def make_rows(self) -> None:
        """Lay the buffer out as training rows (:mod:`pgkit.algorithms.batching`) and take the chunks' states."""
        b = self.buffer
        if self.horizon is None:
            self.rows, self.chunk_states = b.reshape(-1), None
        else:
            self.rows = chunk_rows(b, self.horizon)
            self.chunk_states = self.collector.sequence_states.reshape(-1, self.policy.state_size)

    @property
    def rows_per_unit(self) -> int:
        """Rows in one minibatch unit: 1, or the BPTT horizon."""
        return self.horizon or 1

    @property
    def num_units(self) -> int:
        """Minibatch units per iteration: rows, or BPTT chunks."""
        return self.batch_size // self.rows_per_unit

    def minibatch(self, indices: Tensor) -> TensorDict:
        """The rows of units ``indices`` (``[m]``) as one TensorDict; a recurrent one carries each chunk's
        starting state in ``state``."""
        batch = self.rows[unit_rows(indices, self.rows_per_unit)]
        if self.chunk_states is not None:
            batch["state"] = chunk_state_rows(self.chunk_states, indices, self.rows_per_unit)
        return batch

    def sequences(self, batch: TensorDict) -> Sequences | None:
        """How a minibatch's rows form sequences, for a recurrent policy (None for a feedforward one)."""
        if self.horizon is None:
            return None
        return Sequences(batch["sequence_start"], batch["state"])

    def train_dataloader(self) -> DataLoader:
        # Indices only, from the main process: the buffer lives on the training device.
        dataset = MinibatchIndices(
            self.num_units, self.num_minibatches, self.update_epochs, self.fused_minibatches, self.index_generator
        )
        return DataLoader(dataset, batch_size=None, num_workers=0)

    # ---------------------------------------------------------------------------------------------- torch.compile
    def on_fit_start(self) -> None:
        self._fit_start_time = time.perf_counter()
        self._fit_start_steps = int(self.env_steps)
        self.setup_compile()

    @property
    def compile_enabled(self) -> bool:
        """Whether ``trainer.compile`` resolves to compiling on this module's device."""
        setting = self.cfg.trainer.compile
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
        self._graph_steps = options.get("mode") == "reduce-overhead"

    def mark_step(self) -> None:
        """Tell CUDA-graph trees a new step begins, so the previous step's graph outputs may be overwritten
        (they are copied into the buffer or reduced before the next call)."""
        if self._graph_steps:
            torch.compiler.cudagraph_mark_step_begin()

    def policy_step(self, norm_obs, state: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One acting step on processed observations and each env's recurrent state (``[N, 0]`` when feedforward):
        raw sample, its log-prob, the value, the env action and the next state. A pure tensor function, so
        ``trainer.compile`` can compile it."""
        if self.rollout_forward is not None:
            dist, value = self.rollout_forward(norm_obs)
            next_state = state
        else:
            dist, value, next_state = self.acting_policy.step(norm_obs, state)
        raw, log_prob = dist.sample_with_log_prob()
        return raw, log_prob, value, self.action_adapter(dist, raw), next_state

    def loss_terms(self, *tensors: Tensor) -> dict[str, Tensor]:
        """The differentiable part of an algorithm's loss as a pure tensor function (compiled with
        ``trainer.compile``); algorithms that route their loss through it override it."""
        raise NotImplementedError

    # -------------------------------------------------------------------------------------------------- seeding
    @property
    def distributed(self) -> bool:
        """Whether this run has more than one process (DDP)."""
        return self._trainer is not None and self.trainer.world_size > 1

    def iteration_seed(self, stream: int) -> int:
        """A seed that depends on ``(trainer.seed, rank, iteration, stream)`` only."""
        key = [self.cfg.trainer.seed, self.global_rank, self.current_epoch, stream]
        return int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0] >> 1)

    def index_generator(self) -> torch.Generator:
        """The generator of this iteration's minibatch permutations."""
        return torch.Generator().manual_seed(self.iteration_seed(1))

    def seed_iteration(self) -> None:
        """Seed torch, numpy and Python's global generators for this iteration from ``iteration_seed``: each
        iteration's randomness (action sampling, minibatch order) is a function of the seed, rank and iteration
        alone, whatever consumed random numbers in between, so a resumed run draws exactly what the uninterrupted
        run drew. (Lightning itself draws between iterations, and differently around a restore.)"""
        seed = self.iteration_seed(0)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

    # --------------------------------------------------------------------------------------------- the iteration
    def on_train_epoch_start(self) -> None:
        self._rows, self._count, self._skipped = {}, 0, 0
        self.seed_iteration()
        self.anneal_learning_rates()
        stats = [*self.obs_normalizer.running_stats(), self.reward_scaler.return_rms]
        snapshots = [r.snapshot() for r in stats] if self.distributed else []
        episodes = self.collect_rollout()
        self.make_rows()
        if self.cfg.algorithm.advantage == "vtrace":
            self.refresh_vtrace()
        b = self.buffer
        counted = b["mask"].bool()  # steps that enter the loss (all, except in REINFORCE's masked batches)
        ev = explained_variance(b["value"][counted], b["return"][counted]) if self.has_critic else float("nan")
        if self.distributed:
            for r, snapshot in zip(stats, snapshots, strict=True):
                r.merge_ranks(snapshot, self.all_gather)  # every rank and the checkpoint agree
        new_steps, n_episodes, return_sum, length_sum, ev = iteration_totals(self, episodes, float(ev))
        self.env_steps += int(new_steps)
        steps = int(self.env_steps)
        self.episode_returns.extend(r for r, _ in episodes)
        self.episode_steps.extend([steps] * len(episodes))
        metrics = {}
        if self.has_critic:
            metrics["train/explained_variance"] = ev
        metrics["train/learning_rate"] = self.trainer.optimizers[0].param_groups[0]["lr"]
        if n_episodes:
            metrics["rollout/episode_return"] = return_sum / n_episodes
            metrics["rollout/episode_length"] = length_sum / n_episodes
        elapsed = time.perf_counter() - self._fit_start_time
        metrics["time/sps"] = (steps - self._fit_start_steps) / max(elapsed, 1e-9)
        self.rollout_metrics = metrics

    def start_pass(self, index: int) -> None:
        """Called before minibatch ``index`` of the iteration: at each new pass over the batch after the first,
        V-trace targets are recomputed against the policy as it now is."""
        if index and index % self.num_minibatches == 0 and self.cfg.algorithm.advantage == "vtrace":
            self.refresh_vtrace()

    def training_step(self, indices: Tensor, batch_idx: int) -> Tensor | None:
        if self.fused_minibatches:
            self.minibatch_updates(indices)
            return None
        self.start_pass(batch_idx)
        terms = self.compute_loss(self.minibatch(indices))
        if self.skip_batch(terms["loss"]):
            return None
        self.accumulate(terms)
        return terms["loss"]

    def skip_batch(self, *quantities: Tensor | None) -> bool:
        """With ``trainer.skip_nonfinite_batches``, whether to skip this minibatch (counted) because one of
        ``quantities`` is NaN or inf. Costs a host sync, so only checked when the flag is on."""
        if not self.cfg.trainer.skip_nonfinite_batches:
            return False
        if all(q is None or bool(torch.isfinite(q).all()) for q in quantities):
            return False
        self._skipped += 1
        return True

    def minibatch_updates(self, indices: Tensor) -> None:
        """One optimizer step per row of ``indices`` (``fused_minibatches``). A ``None`` loss skips that step and
        ends the iteration's updates (PPO's target-KL stop)."""
        optimizer = self.optimizers()
        max_grad_norm = self.cfg.algorithm.max_grad_norm
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for first in range(0, indices.shape[0], self.num_minibatches):
            self.start_pass(first)
            # One gather per pass, then contiguous slices: indexing the rows per minibatch costs more.
            batches = self.minibatch(indices[first : first + self.num_minibatches].reshape(-1))
            for batch in batches.split(indices.shape[1] * self.rows_per_unit):
                self.mark_step()
                terms = self.compute_loss(batch)
                loss = terms["loss"]
                if loss is None:
                    self.accumulate(terms)
                    return
                if self.skip_batch(loss):
                    continue
                optimizer.zero_grad()
                self.manual_backward(loss)
                if max_grad_norm is not None:
                    # torch's clip directly (fp32 only, nothing to unscale), for the norm it returns: logged, checked.
                    terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                    if self.skip_batch(terms["grad_norm"]):
                        continue
                self.accumulate(terms)
                optimizer.step()

    def accumulate(self, terms: dict[str, Tensor | None]) -> None:
        """Add a minibatch's detached terms to this iteration's on-device rows (one host sync per iteration)."""
        keys = tuple(key for key, value in terms.items() if value is not None)
        with torch.no_grad():  # one stacked row per minibatch: a handful of ops instead of four per term
            row = torch.stack([terms[key].float() for key in keys])
        self._rows.setdefault(keys, []).append(row)
        self._count += 1

    @property
    def iteration_sums(self) -> dict[str, Tensor]:
        """Each term summed over this iteration's minibatches so far (divide by ``_count`` for the mean)."""
        sums: dict[str, Tensor] = {}
        for keys, rows in self._rows.items():
            for key, total in zip(keys, torch.stack(rows).sum(0), strict=True):
                sums[key] = sums[key] + total if key in sums else total
        return sums

    def on_train_epoch_end(self) -> None:
        metrics = dict(self.rollout_metrics)
        iteration = self.current_epoch + 1
        if self._count:
            sums = self.iteration_sums
            keys = list(sums)
            means = torch.stack([sums[k] for k in keys]).div(self._count)
            if self.distributed:  # the mean over ranks (each rank's mean over its minibatches)
                means = self.all_gather(means.double()).mean(0)
            values = means.tolist()
            bad = next((k for k, v in zip(keys, values, strict=True) if not math.isfinite(v)), None)
            if bad is not None:  # raised before LastCheckpoint runs: the checkpoint on disk predates the bad update
                raise TrainingError(
                    f"non-finite {bad} at iteration {iteration} (env step {int(self.env_steps)}); set "
                    "trainer.skip_nonfinite_batches: true to skip such minibatches instead"
                )
            metrics.update({f"train/{k}": v for k, v in zip(keys, values, strict=True) if k != "loss"})
        if self.cfg.trainer.skip_nonfinite_batches:
            metrics["train/skipped_batches"] = float(self._skipped)
        last = int(self.env_steps) >= self.step_budget
        if last:  # the budget is in env steps; rollouts that stop early (episode batches) need more iterations
            self.trainer.should_stop = True
        every = self.cfg.eval.every_n_iterations
        if every and (iteration % every == 0 or last):
            result = self.run_evaluation()
            metrics["eval/mean_return"], metrics["eval/std_return"] = result.mean_return, result.std_return
            # Visible to ModelCheckpoint(monitor="eval/mean_return") for best-checkpoint selection.
            self.log("eval/mean_return", result.mean_return, logger=False, sync_dist=False)
        self.last_metrics = metrics
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=int(self.env_steps))

    def on_train_end(self) -> None:
        if self.distributed:
            check_ranks_agree(self)

    # ------------------------------------------------------------------------------------------------ evaluation
    def run_evaluation(self) -> EvalResult:
        """Evaluate the current policy with frozen normalisers on the configured evaluation episodes."""
        ev, env = self.cfg.eval, self.cfg.env
        seed = self.cfg.trainer.seed + EVAL_SEED_OFFSET
        return evaluate(self, env.id, ev.episodes, ev.deterministic, seed, env.kwargs, env.max_episode_steps)

    def initial_state(self, batch: int) -> Tensor:
        """Recurrent state of ``batch`` new episodes (``[batch, 0]`` for a feedforward policy)."""
        return self.policy.initial_state(batch, self.device)

    @torch.inference_mode()
    def act(
        self, obs: Any, deterministic: bool, state: Tensor | None = None, episode_start: Any = None
    ) -> tuple[np.ndarray, Tensor]:
        """Environment actions for a batch of raw observations, with frozen normalisation, and the next recurrent
        state. ``state`` (default: new episodes) is reset where ``episode_start`` is true."""
        processed = self.obs_normalizer(obs)
        batch = len(np.asarray(self.observation_layout.raw_leaves(obs)[0]))
        if state is None:
            state = self.initial_state(batch)
        elif episode_start is not None:
            state = state * torch.as_tensor(~np.asarray(episode_start, dtype=bool), device=self.device).unsqueeze(-1)
        dist, _, next_state = self.policy.step(processed, state)
        raw = dist.mode() if deterministic else dist.sample()
        return self.action_adapter(dist, raw).cpu().numpy(), next_state

    # ------------------------------------------------------------------------------------------- critic training
    def regress_value(
        self, optimizer: Any, batch: TensorDict, epochs: int, unit_batch: int, max_grad_norm: float | None,
        weight: Tensor | None = None,
    ) -> Tensor | None:
        """Fit the critic to ``batch["return"]`` with its own optimizer: ``epochs`` passes of minibatch MSE over
        ``batch``'s units (rows, or BPTT chunks of a recurrent policy), weighted by ``weight`` (default 1; REINFORCE
        counts complete episodes only). Manual optimisation. Returns the mean loss, or None when nothing counts."""
        rows = batch.batch_size[0]
        weight = torch.ones(rows, device=self.device) if weight is None else weight
        if float(weight.sum()) == 0:
            return None
        size = self.rows_per_unit
        total, count = torch.zeros((), device=self.device), 0
        for _ in range(epochs):
            for units in torch.randperm(rows // size, device=self.device).split(max(1, unit_batch // size)):
                idx = unit_rows(units, size)
                part = batch[idx]
                w = weight[idx]
                if float(w.sum()) == 0:
                    continue
                value = self.policy.value(part["obs"], self.sequences(part))
                loss = (w * (value - part["return"]).pow(2)).sum() / w.sum()
                optimizer.zero_grad()
                self.manual_backward(loss)
                if max_grad_norm is not None:
                    self.clip_gradients(optimizer, max_grad_norm, "norm")
                optimizer.step()
                total, count = total + loss.detach(), count + 1
        return total / max(count, 1)

    # ------------------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The MLflow run id lets a resumed run continue the same run instead of starting a new curve at step 0.
        checkpoint["pgkit"] = checkpoint_metadata(getattr(self.logger, "run_id", None))

    # ------------------------------------------------------------------------------------------------ subclasses
    def compute_loss(self, batch: TensorDict) -> dict[str, Tensor | None]:
        """The algorithm's loss on a minibatch: ``{"loss": total, <named terms and diagnostics>...}``.

        A ``None`` loss skips the optimizer step for this minibatch."""
        raise NotImplementedError

    @property
    def step_budget(self) -> int:
        """Env steps this run takes in all, over all ranks: ``num_iterations`` full batches."""
        world = self.trainer.world_size if self._trainer is not None else 1
        return self.num_iterations * self.batch_size * world

    @property
    def max_iterations(self) -> int:
        """Upper bound on iterations for the Trainer. Full-size rollouts need exactly ``num_iterations``; a
        subclass whose rollouts can stop early (REINFORCE's episode batches) raises it and the budget stops it."""
        return self.num_iterations

    def anneal_learning_rates(self) -> None:
        """Linear annealing as in CleanRL: each param group's lr is its initial lr times the fraction of the step
        budget still to go, ``1 - env_steps / step_budget`` (with full batches: ``1 - i / num_iterations`` at
        iteration ``i``, 0-based, exactly CleanRL's schedule).

        Set directly rather than through an LR scheduler because it is a pure function of progress: a run resumed
        with a larger ``total_timesteps`` continues on the new schedule at once, where a restored ``LambdaLR``
        would apply one stale step from the old one.
        """
        progress = int(self.env_steps) / self.step_budget
        fraction = max(0.0, 1.0 - progress) if self.cfg.algorithm.anneal_lr else 1.0
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])  # saved with the optimizer state, so kept on resume
                group["lr"] = group["initial_lr"] * fraction


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

import time
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import lightning as L
import numpy as np
import torch
from tensordict import TensorDict
from torch import Tensor

from pgkit.algorithms import kernel_update
from pgkit.algorithms.batching import MinibatchIndices
from pgkit.algorithms.compile import Compilation
from pgkit.algorithms.distributed import check_ranks_agree, gather_env_states, iteration_totals
from pgkit.algorithms.metrics import IterationMetrics
from pgkit.algorithms.progress import Progress
from pgkit.algorithms.training_data import TrainingData
from pgkit.checkpoints import checkpoint_metadata
from pgkit.environments import RewardScaler
from pgkit.environments.actions import ActionAdapter
from pgkit.environments.observations import make_observation_processor
from pgkit.errors import TrainingError
from pgkit.evaluation import EVAL_SEED_OFFSET, EvalResult, evaluate
from pgkit.networks import ActorCritic
from pgkit.networks.fused import FusedForward
from pgkit.ops import explained_variance
from pgkit.rollout import Collector

if TYPE_CHECKING:
    from pgkit.config import ExperimentConfig

__all__ = ["MinibatchIndices", "OnPolicyModule"]


class OnPolicyModule(TrainingData, IterationMetrics, Progress, Compilation, L.LightningModule):
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
    #: The compiled minibatch step (``trainer.kernels``) when the algorithm has one and the run qualifies;
    #: :meth:`kernel_step` then replaces the autograd step in :meth:`minibatch_updates`.
    update_kernel: Any = None

    def __init__(self, config: dict[str, Any], spaces: tuple[gym.Space, gym.Space] | None = None) -> None:
        super().__init__()
        from pgkit.config import ExperimentConfig, validation_context

        self.save_hyperparameters("config", logger=False)
        # With the spaces given (a checkpoint's), nothing the config names is imported or made: see pgkit.trust.
        self.cfg: ExperimentConfig = ExperimentConfig.model_validate(config,
                                                                     context=validation_context(spaces is None))
        env_cfg, algo = self.cfg.env, self.cfg.algorithm
        if spaces is None:
            probe = env_cfg.make_probe()
            spaces = probe.observation_space, probe.action_space
            probe.close()
        self.observation_space, self.action_space = spaces

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
        self.episode_times: list[float] = []  # time.perf_counter() at the end of the rollout in which each finished
        self.last_metrics: dict[str, float] = {}
        self.start_metrics()
        self._fit_start_time = 0.0
        self._fit_start_steps = 0
        self.rollout_metrics: dict[str, float] = {}
        #: Set by fit(resume=...): each rank's packed env state from the checkpoint, restored at setup.
        self.resume_env_states: dict[str, Tensor] | None = None
        #: Eager feedforward rollouts act through a fused copy of the acting network taken at the rollout's start
        #: (None: through the network itself). A plain function, never a module, so no part of the module's state.
        self.rollout_forward: FusedForward | None = None
        #: Gaussian MLP policies act through a compiled kernel instead when ``trainer.kernels`` allows (see
        #: :mod:`pgkit.algorithms.kernel_update`): decided once here, taken afresh at each rollout's start.
        self.use_acting_kernel = kernel_update.wanted(self.policy, self.cfg, acting=True)
        self.rollout_kernel: kernel_update.ActingKernel | None = None

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
        if self.resume_env_states is not None:
            self.collector.restore(self.resume_env_states.get(str(self.global_rank)))

    def teardown(self, stage: str) -> None:
        self.collector.close()

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

    # ---------------------------------------------------------------------------------------------- torch.compile
    def on_fit_start(self) -> None:
        self._fit_start_time = time.perf_counter()
        self._fit_start_steps = int(self.env_steps)
        self.setup_compile()

    def policy_step(self, norm_obs, state: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One acting step on processed observations and each env's recurrent state (``[N, 0]`` when feedforward):
        raw sample, its log-prob, the value, the env action and the next state. A pure tensor function, so
        ``trainer.compile`` can compile it."""
        if self.rollout_kernel is not None:
            raw, log_prob, value, env_action = self.rollout_kernel(norm_obs)
            return raw, log_prob, value, env_action, state
        if self.rollout_forward is not None:
            dist, value = self.rollout_forward(norm_obs)
            next_state = state
        else:
            dist, value, next_state = self.acting_policy.step(norm_obs, state)
        raw, log_prob = dist.sample_with_log_prob()
        return raw, log_prob, value, self.action_adapter(dist, raw), next_state

    # --------------------------------------------------------------------------------------------- the iteration
    def on_train_epoch_start(self) -> None:
        self.start_metrics()
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
        self.check_statistics()
        new_steps, n_episodes, return_sum, length_sum, ev = iteration_totals(self, episodes, float(ev))
        self.env_steps += int(new_steps)
        steps = int(self.env_steps)
        self.episode_returns.extend(r for r, _ in episodes)
        self.episode_steps.extend([steps] * len(episodes))
        self.episode_times.extend([time.perf_counter()] * len(episodes))
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

    def check_statistics(self) -> None:
        """Stop the run (:class:`TrainingError`, before this iteration updates or saves anything) when a running
        statistic overflowed: rewards or observations too large to normalise (1e300) make the variance infinite,
        and every scaled value 0 from then on."""
        named = [("observation", r) for r in self.obs_normalizer.running_stats()]
        if self.reward_scaler.enabled:
            named.append(("reward", self.reward_scaler.return_rms))
        for what, rms in named:
            if not (bool(torch.isfinite(rms.mean).all()) and bool(torch.isfinite(rms.var).all())):
                raise TrainingError(
                    f"the {what} normaliser's running statistics overflowed at iteration {self.current_epoch + 1} "
                    f"(their variance is no longer finite: the {what}s are too large to normalise); scale them "
                    f"down, or set env.normalize_{'reward' if what == 'reward' else 'obs'}: false")

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

    def minibatch_updates(self, indices: Tensor) -> None:
        """One optimizer step per row of ``indices`` (``fused_minibatches``). A ``None`` loss skips that step and
        ends the iteration's updates (PPO's target-KL stop)."""
        optimizer = self.optimizers()
        max_grad_norm = self.cfg.algorithm.max_grad_norm
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if self.update_kernel is not None:
            self.update_kernel.prepare()
        for first in range(0, indices.shape[0], self.num_minibatches):
            self.start_pass(first)
            # One gather per pass, then contiguous slices: indexing the rows per minibatch costs more.
            batches = self.minibatch(indices[first : first + self.num_minibatches].reshape(-1))
            for batch in batches.split(indices.shape[1] * self.rows_per_unit):
                self.mark_step()
                if self.update_kernel is not None:
                    if not self.kernel_step(batch, optimizer):
                        return
                    continue
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

    def kernel_step(self, batch: TensorDict, optimizer: Any) -> bool:
        """One minibatch through :attr:`update_kernel`: accumulate its terms and step ``optimizer``. False ends the
        iteration's updates (as a ``None`` loss does)."""
        raise NotImplementedError

    def on_train_epoch_end(self) -> None:
        self.finish_iteration({**self.rollout_metrics, **self.update_metrics()})

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

    # ------------------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The MLflow run id lets a resumed run continue the same run instead of starting a new curve at step 0; the
        # spaces let predict and export rebuild the policy without an env; every rank's env state goes into the one
        # file, so a checkpoint and its env state are written (and renamed into place) together.
        packed = self.collector.pack_state() if self.collector.envs is not None else None
        checkpoint["pgkit"] = checkpoint_metadata(
            getattr(self.logger, "run_id", None), checkpoint["hyper_parameters"]["config"],
            spaces=(self.observation_space, self.action_space), env_states=gather_env_states(self, packed))

    # ------------------------------------------------------------------------------------------------ subclasses
    def compute_loss(self, batch: TensorDict) -> dict[str, Tensor | None]:
        """The algorithm's loss on a minibatch: ``{"loss": total, <named terms and diagnostics>...}``.

        A ``None`` loss skips the optimizer step for this minibatch."""
        raise NotImplementedError

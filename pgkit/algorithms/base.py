"""``OnPolicyModule``: the plumbing every on-policy algorithm shares, written once.

One Lightning epoch is one policy iteration:

1. ``on_train_epoch_start`` collects ``num_steps x num_envs`` transitions into a preallocated TensorDict, then
   computes advantages and value targets once with :func:`pgkit.ops.gae`.
2. The train dataloader yields minibatch *indices* (``update_epochs x num_minibatches`` per epoch).
3. ``training_step`` gathers the minibatch and calls the subclass's ``compute_loss``; the named terms it returns
   are summed on-device and logged once per iteration, keyed by environment steps.
4. ``on_train_epoch_end`` logs rollout and update metrics and evaluates every ``eval.every_n_iterations``.

Subclasses implement ``compute_loss`` and ``configure_optimizers`` and nothing else of the loop.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium.vector import SyncVectorEnv
from tensordict import TensorDict
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from pgkit.checkpoints import checkpoint_metadata
from pgkit.environments import ObservationNormalizer, RewardScaler, flat_dim, make_vec_env, seed_list
from pgkit.environments.actions import ActionAdapter
from pgkit.errors import TrainingError
from pgkit.evaluation import EVAL_SEED_OFFSET, EvalResult, evaluate
from pgkit.networks import ActorCritic
from pgkit.networks.fused import FusedForward, fuse
from pgkit.ops import explained_variance, gae
from pgkit.resume_state import load_env_state, save_env_state, sidecar_path

if TYPE_CHECKING:
    from pgkit.config import ExperimentConfig


class MinibatchIndices(IterableDataset):
    """Yields ``epochs`` fresh permutations of ``range(batch_size)``, each split into ``num_minibatches`` parts.

    With ``stacked`` it yields them all at once, as one ``[epochs * num_minibatches, size]`` tensor (the same
    permutations, drawn in the same order), for modules that loop over minibatches inside one training step.
    ``generator`` is called at each pass for the permutations' generator (the module seeds one per iteration, so a
    resumed run draws the same ones; Lightning prefetches the first batch before the iteration's hooks run).
    """

    def __init__(
        self,
        batch_size: int,
        num_minibatches: int,
        epochs: int,
        stacked: bool = False,
        generator: Callable[[], torch.Generator | None] = lambda: None,
    ) -> None:
        self.batch_size, self.num_minibatches, self.epochs = batch_size, num_minibatches, epochs
        self.stacked, self.generator = stacked, generator

    def __iter__(self):
        g = self.generator()
        parts = (
            torch.randperm(self.batch_size, generator=g).view(self.num_minibatches, -1) for _ in range(self.epochs)
        )
        if self.stacked:
            yield torch.cat(list(parts))
        else:
            for part in parts:
                yield from part

    def __len__(self) -> int:
        return 1 if self.stacked else self.epochs * self.num_minibatches


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
        self.obs_normalizer = ObservationNormalizer(
            (flat_dim(self.observation_space),), env_cfg.obs_clip, env_cfg.normalize_obs
        )
        self.reward_scaler = RewardScaler(env_cfg.num_envs, algo.gamma, env_cfg.reward_clip, env_cfg.normalize_reward)
        self.register_buffer("env_steps", torch.zeros((), dtype=torch.int64))

        self.num_envs = env_cfg.num_envs
        self.batch_size = algo.num_steps * env_cfg.num_envs
        self.num_iterations = self.cfg.num_iterations
        self.envs: Any = None
        self._next_obs: Tensor | None = None
        self.buffer: TensorDict | None = None
        self.episode_returns: list[float] = []  # every training episode finished in this process, in order
        self.episode_steps: list[int] = []  # env_steps at the end of the iteration in which each one finished
        self.last_metrics: dict[str, float] = {}
        self._rows: dict[tuple[str, ...], list[Tensor]] = {}
        self._count = 0
        self._skipped = 0  # minibatches skipped this iteration (trainer.skip_nonfinite_batches)
        self._fit_start_time = 0.0
        self._fit_start_steps = 0
        self.rollout_metrics: dict[str, float] = {}
        self.flat: TensorDict | None = None
        self.steps_taken = self.cfg.algorithm.num_steps  # rows of the buffer the last rollout filled
        self._graph_steps = False  # compiled with CUDA graphs (set by setup_compile)
        self._compiled = False
        self.resume_from: Path | None = None  # set by fit(resume=...): restore the env state saved with it
        #: Eager rollouts act through a fused copy of the acting network taken at the rollout's start (None: through
        #: the network itself). A plain function, never a module, so it is no part of the module's state.
        self.rollout_forward: FusedForward | None = None

    # ----------------------------------------------------------------------------------------------- environments
    def setup(self, stage: str) -> None:
        if stage != "fit" or self.envs is not None:
            return
        env_cfg = self.cfg.env
        self.envs = make_vec_env(
            env_cfg.id, self.num_envs, env_cfg.vectorization, env_cfg.kwargs, env_cfg.max_episode_steps
        )
        # Each rank's sub-envs get distinct seeds: rank r uses seed + r * num_envs + i.
        seeds = seed_list(self.cfg.trainer.seed, self.num_envs, offset=self.global_rank * self.num_envs)
        obs, _ = self.envs.reset(seed=seeds)
        self.envs.action_space.seed(seeds[0])
        self._next_obs = torch.as_tensor(obs, dtype=torch.float32)
        if self.resume_from is not None:
            self.restore_env_state(self.resume_from)

    def teardown(self, stage: str) -> None:
        if self.envs is not None:
            self.envs.close()
            self.envs = None

    def _allocate_buffer(self) -> TensorDict:
        T, N, dev = self.cfg.algorithm.num_steps, self.num_envs, self.device
        act_shape = self.action_space.shape or ()
        act_dtype = torch.float32 if act_shape and self.action_space.dtype.kind == "f" else torch.int64
        f32 = dict(dtype=torch.float32, device=dev)
        return TensorDict(
            {
                "obs": torch.zeros(T, N, flat_dim(self.observation_space), **f32),
                "action": torch.zeros(T, N, *act_shape, dtype=act_dtype, device=dev),
                "log_prob": torch.zeros(T, N, **f32),
                "reward": torch.zeros(T, N, **f32),
                "terminated": torch.zeros(T, N, dtype=torch.bool, device=dev),
                "truncated": torch.zeros(T, N, dtype=torch.bool, device=dev),
                "value": torch.zeros(T, N, **f32),
                "final_value": torch.zeros(T, N, **f32),
                "advantage": torch.zeros(T, N, **f32),
                "return": torch.zeros(T, N, **f32),
                "mask": torch.ones(T, N, **f32),  # 1 where a step counts in the loss
            },
            batch_size=[T, N],
            device=dev,
        )

    # ---------------------------------------------------------------------------------------------------- rollout
    def collect_rollout(self) -> list[tuple[float, int]]:
        """Fill ``self.buffer`` with one rollout and its advantages; return the (return, length) of each episode
        that ended during it."""
        if self.buffer is None:
            # Allocated outside inference mode, so the update may use the buffer in autograd.
            self.buffer = self._allocate_buffer()
        with torch.inference_mode():
            return self._collect(self.buffer)

    @property
    def acting_policy(self) -> ActorCritic:
        """The network that acts and estimates values during rollouts (V-MPO overrides it with its target)."""
        return self.policy

    def begin_rollout(self) -> None:
        """Called before each rollout (REINFORCE's episode batches reset the envs here)."""

    def rollout_finished(self, ended: np.ndarray) -> bool:
        """Whether to stop the rollout early; ``ended[i]`` says sub-env ``i`` has ended an episode in it."""
        return False

    def observe_step(self, info: dict[str, Any], done: np.ndarray) -> None:
        """Called after every env step with the vector env's ``info`` and ``terminated | truncated``."""

    def _collect(self, b: TensorDict) -> list[tuple[float, int]]:
        obs_b, act_b, logp_b = b["obs"], b["action"], b["log_prob"]
        val_b, final_b = b["value"], b["final_value"]
        final_b.zero_()
        dev = self.device
        self.begin_rollout()
        # Observations, rewards and flags stay numpy on the host; the normalisers turn them into device tensors.
        # On CPU, rewards and flags are written through numpy views of the buffer (a numpy store costs ~1 us,
        # a torch one ~4).
        host = dev.type == "cpu"
        rew_s, term_s, trunc_s = (b[k].numpy() if host else b[k] for k in ("reward", "terminated", "truncated"))
        obs = self._next_obs.numpy()
        actor = self.acting_policy
        self.rollout_forward = None if self._compiled else fuse(actor)
        episodes: list[tuple[float, int]] = []
        any_end = np.zeros(self.num_envs, dtype=bool)
        self.steps_taken = T = self.cfg.algorithm.num_steps
        for t in range(T):
            self.obs_normalizer.update(obs)
            norm_obs = self.obs_normalizer(obs)
            self.mark_step()
            raw, log_prob, value, env_action = self.policy_step(norm_obs)
            obs_b[t], act_b[t], logp_b[t], val_b[t] = norm_obs, raw, log_prob, value
            try:
                next_obs, reward, terminated, truncated, info = self.envs.step(env_action.cpu().numpy())
            except Exception as exc:
                raise TrainingError(
                    f"env {self.cfg.env.id} failed at iteration {self.current_epoch + 1}: {exc}"
                ) from exc
            if not (np.isfinite(next_obs).all() and np.isfinite(reward).all()):
                self._reject_nonfinite_step(next_obs, reward)
            done = terminated | truncated
            self.reward_scaler.update(reward, done)
            rew_s[t] = self.reward_scaler.scale(reward)
            if host:
                term_s[t], trunc_s[t] = terminated, truncated
            else:
                term_s[t], trunc_s[t] = torch.as_tensor(terminated), torch.as_tensor(truncated)
            bootstrap = np.flatnonzero(truncated & ~terminated)
            if bootstrap.size:  # value of the real final observation, not of the auto-reset one
                final_obs = np.stack(info["final_obs"][bootstrap]).astype(np.float32)
                final_b[t, torch.as_tensor(bootstrap, device=dev)] = actor.value(self.obs_normalizer(final_obs))
            if "episode" in info:
                finished = np.flatnonzero(info["_episode"])
                episodes += [(float(info["episode"]["r"][i]), int(info["episode"]["l"][i])) for i in finished]
            obs = np.asarray(next_obs, dtype=np.float32)
            self.observe_step(info, done)
            any_end |= done
            if t + 1 < T and self.rollout_finished(any_end):
                self.steps_taken = t + 1
                # Unused rows end every trace and carry nothing, so no stale data reaches the steps before them.
                for key, fill in (("reward", 0.0), ("value", 0.0), ("terminated", True), ("truncated", False)):
                    b[key][t + 1 :] = fill
                break
        self._next_obs = torch.from_numpy(obs)
        self.compute_targets(b, actor.value(self.obs_normalizer(obs)))
        return episodes

    def _reject_nonfinite_step(self, obs: np.ndarray, reward: np.ndarray) -> None:
        bad_obs = np.flatnonzero(~np.isfinite(np.asarray(obs, dtype=np.float64)).reshape(len(reward), -1).all(1))
        what, where = ("observation", bad_obs) if bad_obs.size else ("reward", np.flatnonzero(~np.isfinite(reward)))
        raise TrainingError(
            f"non-finite {what} from env {self.cfg.env.id} sub-env {int(where[0])} at iteration "
            f"{self.current_epoch + 1}"
        )

    def compute_targets(self, b: TensorDict, last_value: Tensor) -> None:
        """Fill ``b["advantage"]`` and ``b["return"]`` (and ``b["mask"]`` if some steps must not count).

        The default is GAE: ``next_value`` is the next step's value inside an episode, the real final observation's
        value at a truncation, and ``last_value`` (the value after the last step) at the end of the rollout.
        """
        next_value = torch.cat([b["value"][1:], last_value.unsqueeze(0)])
        next_value = torch.where(b["truncated"], b["final_value"], next_value)
        algo = self.cfg.algorithm
        advantage, ret = gae(
            b["reward"], b["value"], next_value, b["terminated"], b["truncated"], algo.gamma, algo.gae_lambda
        )
        b["advantage"].copy_(advantage)
        b["return"].copy_(ret)

    # ---------------------------------------------------------------------------------------------- lightning hooks
    def train_dataloader(self) -> DataLoader:
        # Indices only, from the main process: the buffer lives on the training device.
        dataset = MinibatchIndices(
            self.batch_size, self.num_minibatches, self.update_epochs, self.fused_minibatches, self.index_generator
        )
        return DataLoader(dataset, batch_size=None, num_workers=0)

    def on_fit_start(self) -> None:
        self._fit_start_time = time.perf_counter()
        self._fit_start_steps = int(self.env_steps)
        self.setup_compile()

    # ---------------------------------------------------------------------------------------------- torch.compile
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

    def policy_step(self, norm_obs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One acting step on normalised observations: raw sample, its log-prob, the value and the env action.
        A pure tensor function, so ``trainer.compile`` can compile it."""
        dist, value = (self.rollout_forward or self.acting_policy)(norm_obs)
        raw, log_prob = dist.sample_with_log_prob()
        return raw, log_prob, value, self.action_adapter(dist, raw)

    def loss_terms(self, *tensors: Tensor) -> dict[str, Tensor]:
        """The differentiable part of an algorithm's loss as a pure tensor function (compiled with
        ``trainer.compile``); algorithms that route their loss through it override it."""
        raise NotImplementedError

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

    def on_train_epoch_start(self) -> None:
        self._rows, self._count, self._skipped = {}, 0, 0
        self.seed_iteration()
        self.anneal_learning_rates()
        rms = (self.obs_normalizer.rms, self.reward_scaler.return_rms)
        snapshots = [r.snapshot() for r in rms] if self.distributed else []
        episodes = self.collect_rollout()
        b = self.buffer
        counted = b["mask"].bool()  # steps that enter the loss (all, except in REINFORCE's masked batches)
        ev = explained_variance(b["value"][counted], b["return"][counted]) if self.has_critic else float("nan")
        # This iteration's totals over ranks: steps, episodes (count, return and length sums), explained variance.
        local = [self.steps_taken * self.num_envs, len(episodes), sum(r for r, _ in episodes),
                 sum(n for _, n in episodes), float(ev)]
        if self.distributed:
            for r, snapshot in zip(rms, snapshots, strict=True):
                r.merge_ranks(snapshot, self.all_gather)  # every rank and the checkpoint agree
            gathered = self.all_gather(torch.tensor(local, dtype=torch.float64, device=self.device))
            totals = gathered.sum(0).tolist()
            totals[4] = float(gathered[:, 4].mean())
        else:
            totals = local
        new_steps, n_episodes, return_sum, length_sum, ev = totals
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
        self.flat = b.reshape(-1)

    def training_step(self, indices: Tensor, batch_idx: int) -> Tensor | None:
        if self.fused_minibatches:
            self.minibatch_updates(indices)
            return None
        terms = self.compute_loss(self.flat[indices])
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
        # One gather for the whole iteration, then contiguous slices: indexing the buffer per minibatch costs more.
        for batch in self.flat[indices.reshape(-1)].split(indices.shape[1]):
            self.mark_step()
            terms = self.compute_loss(batch)
            loss = terms["loss"]
            if loss is None:
                self.accumulate(terms)
                break
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
            self.check_ranks_agree()

    def check_ranks_agree(self) -> None:
        """Raise :class:`TrainingError` unless every rank ends with the same parameters and normaliser statistics
        (DDP averages gradients; :meth:`RunningMeanStd.merge_ranks` syncs the statistics)."""
        # Everything but the per-env discounted returns of the reward scaler: those belong to each rank's own envs.
        state = [
            t.detach().double().flatten()
            for key, t in self.state_dict().items()
            if t.is_floating_point() and not key.endswith("reward_scaler.returns")
        ]
        checksum = torch.cat(state)
        gathered = self.all_gather(torch.stack([checksum.sum(), checksum.abs().sum(), (checksum * checksum).sum()]))
        if not bool((gathered == gathered[0]).all()):
            raise TrainingError(f"DDP ranks ended with different parameters or statistics: {gathered.tolist()}")
        if self.trainer.is_global_zero:
            print(f"ddp: {self.trainer.world_size} ranks agree on parameters and normaliser statistics "
                  f"(checksum {float(gathered[0][1]):.6f})")

    def run_evaluation(self) -> EvalResult:
        """Evaluate the current policy with frozen normalisers on the configured evaluation episodes."""
        ev, env = self.cfg.eval, self.cfg.env
        seed = self.cfg.trainer.seed + EVAL_SEED_OFFSET
        return evaluate(self, env.id, ev.episodes, ev.deterministic, seed, env.kwargs, env.max_episode_steps)

    @torch.inference_mode()
    def act(self, obs: np.ndarray, deterministic: bool) -> np.ndarray:
        """Environment actions for a batch of raw observations, with frozen normalisation."""
        dist = self.policy.distribution(self.obs_normalizer(obs))
        raw = dist.mode() if deterministic else dist.sample()
        return self.action_adapter(dist, raw).cpu().numpy()

    def regress_value(
        self, optimizer: Any, obs: Tensor, targets: Tensor, epochs: int, batch_size: int, max_grad_norm: float | None
    ) -> Tensor | None:
        """Fit the critic to ``targets`` with its own optimizer: ``epochs`` passes of minibatch MSE (manual
        optimisation). Returns the mean loss, or None when there is nothing to fit (no complete episode in a
        REINFORCE batch)."""
        if obs.shape[0] == 0:
            return None
        total, count = torch.zeros((), device=obs.device), 0
        for _ in range(epochs):
            for idx in torch.randperm(obs.shape[0], device=obs.device).split(batch_size):
                loss = F.mse_loss(self.policy.value(obs[idx]), targets[idx])
                optimizer.zero_grad()
                self.manual_backward(loss)
                if max_grad_norm is not None:
                    self.clip_gradients(optimizer, max_grad_norm, "norm")
                optimizer.step()
                total, count = total + loss.detach(), count + 1
        return total / count

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The MLflow run id lets a resumed run continue the same run instead of starting a new curve at step 0.
        checkpoint["pgkit"] = checkpoint_metadata(getattr(self.logger, "run_id", None))


    def save_env_state(self, checkpoint: Path) -> None:
        """Write this rank's vector env and next observation next to ``checkpoint`` (see :mod:`pgkit.resume_state`;
        sync vector envs only)."""
        if not isinstance(self.envs.unwrapped if self.envs is not None else None, SyncVectorEnv):
            return
        state = {"envs": self.envs, "next_obs": self._next_obs.numpy(), "env_id": self.cfg.env.id}
        save_env_state(sidecar_path(checkpoint, self.global_rank), state)

    def restore_env_state(self, checkpoint: Path) -> None:
        """Replace the freshly reset envs by the ones saved with ``checkpoint``, when their signed state verifies;
        otherwise keep the fresh envs and say why (the run resumes, not bit-exactly)."""
        state, reason = load_env_state(sidecar_path(checkpoint, self.global_rank))
        if state is None or state.get("env_id") != self.cfg.env.id:
            reason = reason or "it belongs to another env"
            print(f"pgkit: resuming with freshly reset envs: {reason}", file=sys.stderr)
            return
        self.envs.close()
        self.envs = state["envs"]
        self._next_obs = torch.from_numpy(state["next_obs"])

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

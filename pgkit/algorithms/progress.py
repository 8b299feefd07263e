"""Where a run is: per-iteration seeds, the step budget, and the learning-rate schedule.

A mixin of :class:`~pgkit.algorithms.base.OnPolicyModule`.
"""

from __future__ import annotations

import random
import sys

import numpy as np
import torch


class Progress:
    """Seeds every iteration from ``(seed, rank, iteration)``; anneals learning rates over the step budget."""

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
        # torch.manual_seed also walks every device backend (about 1 ms, felt at A2C's tiny iterations); seed the
        # CPU generator directly, and CUDA's when CUDA is in use.
        torch.default_generator.manual_seed(seed)
        if torch.cuda.is_initialized():
            torch.cuda.manual_seed_all(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

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
        iteration ``i``, 0-based, exactly CleanRL's schedule). Groups marked ``"anneal": False`` keep their lr.

        Set directly rather than through an LR scheduler because it is a pure function of progress: a run resumed
        with a larger ``total_timesteps`` continues on the new schedule at once, where a restored ``LambdaLR``
        would apply one stale step from the old one.
        """
        progress = int(self.env_steps) / self.step_budget
        fraction = max(0.0, 1.0 - progress) if self.cfg.algorithm.anneal_lr else 1.0
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                if not group.get("anneal", True):  # V-MPO's duals keep a fixed rate
                    continue
                group.setdefault("initial_lr", group["lr"])  # saved with the optimizer state, so kept on resume
                group["lr"] = group["initial_lr"] * fraction

    def return_reached(self, window: int = 100) -> bool:
        """``trainer.stop_at_return``: whether the mean return of the last ``window`` training episodes has reached
        it (False until ``window`` episodes have finished in this process). Rank 0's episodes decide, so every rank
        stops at the same iteration."""
        threshold = self.cfg.trainer.stop_at_return
        if threshold is None:
            return False
        returns = self.episode_returns
        mean = float(np.mean(returns[-window:])) if len(returns) >= window else None
        reached = bool(self.trainer.strategy.broadcast(mean is not None and mean >= threshold, src=0))
        if reached and self.trainer.is_global_zero:
            print(f"pgkit: the last {window} training episodes' mean return {mean:.1f} reached "
                  f"trainer.stop_at_return {threshold:g} at step {int(self.env_steps)}; stopping", file=sys.stderr)
        return reached

    def finish_iteration(self, metrics: dict[str, float]) -> tuple[int, bool]:
        """The end of an iteration, shared by the gymnasium and language modules: stop once the step budget is
        spent (rollouts that stop early need more iterations) or ``trainer.stop_at_return`` reached, evaluate every
        ``eval.every_n_iterations`` and at the last iteration, and log ``metrics`` keyed by env steps. Returns
        ``(iteration, last)``."""
        iteration = self.current_epoch + 1
        last = int(self.env_steps) >= self.step_budget or self.return_reached()
        if last:
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
        return iteration, last

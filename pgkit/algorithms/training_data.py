"""What the update trains on: advantages and value targets, the training rows, minibatches and sequences.

A mixin of :class:`~pgkit.algorithms.base.OnPolicyModule` (it uses the module's config, buffer, policy and
collector). GAE is computed once per rollout; V-trace at every pass over the batch, because it weighs the
behaviour policy's actions by the current policy. The rows are the buffer laid out for training
(:mod:`pgkit.algorithms.batching`): single transitions for a feedforward policy, whole BPTT chunks for a recurrent one.
"""

from __future__ import annotations

from typing import Any

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
from pgkit.networks.recurrent import Sequences
from pgkit.ops import vtrace


class TrainingData:
    """Targets, training rows, minibatches and sequences of an :class:`~pgkit.algorithms.base.OnPolicyModule`."""

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
        self.mark_step()
        advantage, ret = self.gae_fn(
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


    def start_pass(self, index: int) -> None:
        """Called before minibatch ``index`` of the iteration: at each new pass over the batch after the first,
        V-trace targets are recomputed against the policy as it now is."""
        if index and index % self.num_minibatches == 0 and self.cfg.algorithm.advantage == "vtrace":
            self.refresh_vtrace()


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

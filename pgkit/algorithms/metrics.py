"""An iteration's update metrics: each minibatch's named terms, summed on the device, reduced once.

A mixin of :class:`~pgkit.algorithms.base.OnPolicyModule`. One host sync per iteration: every minibatch adds one
stacked row of its detached terms; the iteration's means (over ranks too) are taken at its end and checked finite.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pgkit.errors import TrainingError


class IterationMetrics:
    """Accumulates minibatch terms and turns them into the iteration's ``train/`` metrics."""

    def skip_batch(self, *quantities: Tensor | None) -> bool:
        """With ``trainer.skip_nonfinite_batches``, whether to skip this minibatch (counted) because one of
        ``quantities`` is NaN or inf. Costs a host sync, so only checked when the flag is on."""
        if not self.cfg.trainer.skip_nonfinite_batches:
            return False
        if all(q is None or bool(torch.isfinite(q).all()) for q in quantities):
            return False
        self._skipped += 1
        return True


    def accumulate(self, terms: dict[str, Tensor | None]) -> None:
        """Add a minibatch's detached terms to this iteration's on-device rows (one host sync per iteration)."""
        keys = tuple(key for key, value in terms.items() if value is not None)
        with torch.no_grad():  # one stacked row per minibatch: a handful of ops instead of four per term
            row = torch.stack([terms[key].float() for key in keys])
        self.accumulate_row(keys, row)

    def accumulate_row(self, keys: tuple[str, ...], row: Tensor) -> None:
        """:meth:`accumulate` for terms already stacked into one row, in the order of ``keys``."""
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

    def start_metrics(self) -> None:
        """Forget the previous iteration's terms."""
        self._rows: dict[tuple[str, ...], list[Tensor]] = {}
        self._count = 0
        self._skipped = 0  # minibatches skipped this iteration (trainer.skip_nonfinite_batches)

    def update_metrics(self) -> dict[str, float]:
        """This iteration's mean of each term as ``train/<term>`` (over ranks too); raises :class:`TrainingError`
        naming the first non-finite one."""
        metrics: dict[str, float] = {}
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
                    f"non-finite {bad} at iteration {self.current_epoch + 1} (env step {int(self.env_steps)}); set "
                    "trainer.skip_nonfinite_batches: true to skip such minibatches instead"
                )
            metrics.update({f"train/{k}": v for k, v in zip(keys, values, strict=True) if k != "loss"})
        if self.cfg.trainer.skip_nonfinite_batches:
            metrics["train/skipped_batches"] = float(self._skipped)
        return metrics

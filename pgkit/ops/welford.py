"""Running mean and variance, merged batch by batch (Chan et al.'s parallel form of Welford's algorithm)."""

from __future__ import annotations

from torch import Tensor


def merge_moments(
    mean: Tensor, var: Tensor, count: Tensor, batch_mean: Tensor, batch_var: Tensor, batch_count: Tensor | float
) -> tuple[Tensor, Tensor, Tensor]:
    """Combine running moments ``(mean, var, count)`` with those of a new batch.

    ``var`` is the population variance. Works elementwise, so ``mean``/``var`` may have any shape.
    """
    total = count + batch_count
    delta = batch_mean - mean
    new_mean = mean + delta * (batch_count / total)
    m2 = var * count + batch_var * batch_count + delta.pow(2) * (count * batch_count / total)
    return new_mean, m2 / total, total

"""Running mean and variance, merged batch by batch (Chan et al.'s parallel form of Welford's algorithm)."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
from torch import Tensor

ArrayT = TypeVar("ArrayT", Tensor, np.ndarray)


def merge_moments(
    mean: ArrayT, var: ArrayT, count: ArrayT, batch_mean: ArrayT, batch_var: ArrayT, batch_count: ArrayT | float
) -> tuple[ArrayT, ArrayT, ArrayT]:
    """Combine running moments ``(mean, var, count)`` with those of a new batch.

    ``var`` is the population variance. Works elementwise, so ``mean``/``var`` may have any shape, and on torch
    tensors or numpy arrays alike (arithmetic operators only).
    """
    total = count + batch_count
    delta = batch_mean - mean
    new_mean = mean + delta * (batch_count / total)
    m2 = var * count + batch_var * batch_count + delta * delta * (count * batch_count / total)
    return new_mean, m2 / total, total

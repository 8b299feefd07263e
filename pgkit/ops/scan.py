"""The reverse discounted scan ``y[t] = x[t] + a[t] * y[t+1]`` behind GAE and reward-to-go, without a loop over time.

This is the device-agnostic, differentiable path: CUDA tensors, inputs that need a gradient, and ``torch.compile``
graphs use it. On CPU outside autograd the ops call the compiled loops of :mod:`pgkit.ops.kernels` instead, which
are faster on every shape. Written here because no maintained library has an exact one: TorchRL's vectorised GAE
with scalar gamma and lambda is a conv1d with the geometric filter ``(gamma * lambda) ** k`` truncated where it
falls below 1e-7, over the trajectories split at episode ends and padded, and its other GAE steps through time in
Python.

Short axes (up to ``DIRECT`` steps) are one matrix product with ``M[t, k] = a[t] * ... * a[k-1]`` for ``k >= t``.
Longer ones are cut into blocks of ``BLOCK`` steps, each solved by such a product; the values at the block starts
then form a scan of the same kind, ``BLOCK`` times shorter (its discount is the product over a block), and each block
adds its successor's start value times the discount left to its end. Every product of discounts is taken directly,
never as a quotient, so a discount of 0 (an episode end) or one that underflows is exact, and the result matches the
sequential recursion to rounding (tested against it and against TorchRL).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK = 16
"""Steps per block of a long scan: ``T * BLOCK`` multiply-adds per row, in BLAS, plus a scan ``BLOCK`` times shorter."""
DIRECT = 64
"""Scans up to this length are a single ``T x T`` matrix product."""


def padded_length(steps: int) -> int:
    """The length :func:`discounted_reverse_cumsum` works on: short axes as they are, long ones to whole blocks.

    Callers that build ``x`` anyway can allocate it this long, with zeros after ``steps``, to spare the scan a copy.
    """
    return steps if steps <= DIRECT else -(-steps // BLOCK) * BLOCK


@functools.lru_cache(maxsize=64)
def _constant_factors(discount: float, size: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(M.T, to_end)`` for a constant discount: ``M[t, k] = discount ** (k - t)`` for ``k >= t`` (else 0), and
    ``to_end[t] = discount ** (size - t)``. Cached: the same few are used over and over."""
    steps = torch.arange(size, device=device)
    lag = steps[None, :] - steps[:, None]
    base = torch.tensor(discount, dtype=dtype, device=device)
    matrix = base.pow(lag.clamp(min=0).to(dtype)).masked_fill_(lag < 0, 0.0)
    return matrix.T.contiguous(), base.pow(torch.arange(size, 0, -1, dtype=dtype, device=device))


def _tail_products(discount: Tensor) -> Tensor:
    """``P[..., t, k] = discount[t] * ... * discount[k]`` for ``k >= t`` (1 where ``k < t``)."""
    size = discount.shape[-1]
    lower = torch.ones(size, size, dtype=torch.bool, device=discount.device).tril_(-1)
    factors = discount.unsqueeze(-2).expand(*discount.shape[:-1], size, size).masked_fill(lower, 1.0)
    return factors.cumprod(dim=-1)


def _varying_matrix(tails: Tensor) -> Tensor:
    """``M[..., t, k] = a[t] * ... * a[k-1]`` for ``k >= t`` (1 on the diagonal), else 0."""
    return F.pad(tails, (1, 0), value=1.0)[..., :-1].triu_()


def discounted_reverse_cumsum(x: Tensor, discount: float | Tensor) -> Tensor:
    """``y[..., t] = x[..., t] + discount[..., t] * y[..., t + 1]`` along the last axis, with ``y`` past the end 0.

    ``discount`` is one number for every step, or a tensor shaped like ``x`` (0 where a trace must stop).
    """
    steps = x.shape[-1]
    varying = isinstance(discount, Tensor)
    if steps <= DIRECT:
        if varying:
            return (_varying_matrix(_tail_products(discount.to(x.dtype))) @ x.unsqueeze(-1)).squeeze(-1)
        return x @ _constant_factors(float(discount), steps, x.dtype, x.device)[0]
    width = padded_length(steps)
    chunks = (x if width == steps else F.pad(x, (0, width - steps))).unflatten(-1, (width // BLOCK, BLOCK))
    if varying:
        padded = discount.to(x.dtype) if width == steps else F.pad(discount.to(x.dtype), (0, width - steps))
        tails = _tail_products(padded.unflatten(-1, (width // BLOCK, BLOCK)))
        local = (_varying_matrix(tails) @ chunks.unsqueeze(-1)).squeeze(-1)
        to_end = tails[..., -1]  # a[t] ... a[end of block]: what the next block's start is worth at t
        across: float | Tensor = to_end[..., 0]
    else:
        matrix_t, to_end = _constant_factors(float(discount), BLOCK, x.dtype, x.device)
        local = chunks @ matrix_t
        across = float(discount) ** BLOCK
    starts = discounted_reverse_cumsum(local[..., 0], across)
    local.addcmul_(to_end, F.pad(starts[..., 1:], (0, 1)).unsqueeze(-1))
    return local.flatten(-2)[..., :steps]


def reverse_scan(x: Tensor, discount: Tensor) -> Tensor:
    """:func:`discounted_reverse_cumsum` with a per-step ``discount`` shaped like ``x``: by the compiled loop of
    :func:`pgkit.ops.kernels.reverse_scan_rows` on CPU outside autograd (one pass, fastest on every shape), by the
    blocked scan elsewhere."""
    from pgkit.ops._arrays import fits_cpu_loops

    if not fits_cpu_loops(x, discount) or x.dtype not in (torch.float32, torch.float64) or x.ndim == 0:
        return discounted_reverse_cumsum(x, discount)
    from pgkit.ops.kernels import empty_like_layout, reverse_scan_rows, row_shape

    flat = row_shape(x.shape)
    rows = x.reshape(flat).numpy()
    out = empty_like_layout(rows)
    reverse_scan_rows(rows, discount.to(x.dtype).broadcast_to(x.shape).reshape(flat).numpy(), out)
    return torch.from_numpy(out).reshape(x.shape)

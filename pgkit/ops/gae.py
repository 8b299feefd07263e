"""Generalised advantage estimation: one formula, for rollouts with episode ends and for stateset-style trajectories.

``delta[t] = r[t] + gamma * V(s[t+1]) * (1 - terminated[t]) - V(s[t])`` and
``A[t] = delta[t] + gamma * lambda * (1 - done[t]) * A[t+1]``: on CPU outside autograd one compiled pass
(:mod:`pgkit.ops.kernels`), elsewhere the blocked scan :func:`discounted_reverse_cumsum`.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pgkit.ops._arrays import as_tensor, cpu_array, fits_cpu_loops, float_dtype, give_back, is_torch
from pgkit.ops.scan import discounted_reverse_cumsum, padded_length


def _td_errors(
    reward: Tensor,
    value: Tensor,
    next_value: Tensor,
    gamma: float,
    terminated: Tensor | None = None,
    scratch: Tensor | None = None,
) -> Tensor:
    """``r + gamma * V(s') * (1 - terminated) - V(s)`` in a ``[..., padded_length(T)]`` buffer, zero after ``T``."""
    steps = reward.shape[-1]
    following = next_value if terminated is None else next_value * ~terminated
    if scratch is None:
        # Out-of-place, then one contiguous padded copy: under torch.compile an ``out=`` into a buffer gives it the
        # layout of a transposed (time-major) input, which inductor's batched matmul then fails to view.
        return F.pad(torch.add(reward, following, alpha=gamma).sub_(value), (0, padded_length(steps) - steps))
    # delta goes straight into the caller's buffer, as long as the scan wants, so the scan never copies it to pad it.
    scratch[..., steps:] = 0.0
    torch.add(reward, following, alpha=gamma, out=scratch[..., :steps]).sub_(value)
    return scratch


def advantages(
    reward: Tensor,
    value: Tensor,
    next_value: Tensor,
    gamma: float,
    gae_lambda: float,
    terminated: Tensor | None = None,
    done: Tensor | None = None,
    scratch: Tensor | None = None,
) -> Tensor:
    """GAE along the last axis. Without ``done`` every trace runs to the end of the axis, where the value is 0.

    On CPU, outside autograd, one compiled pass (:func:`pgkit.ops.kernels.gae_rows`); elsewhere (CUDA, or inputs that
    need a gradient) the blocked scan of :mod:`pgkit.ops.scan`, which gives the same numbers to rounding.

    ``scratch``, if given, receives the TD errors: a ``[..., padded_length(T)]`` buffer (``reward`` may be its first
    ``T`` columns). By default one is allocated.
    """
    steps = reward.shape[-1]
    if scratch is None and fits_cpu_loops(reward, value, next_value):
        return _advantages_loop(reward, value, next_value, gamma, gae_lambda, terminated, done)
    delta = _td_errors(reward, value, next_value, gamma, terminated, scratch)
    discount: float | Tensor = gamma * gae_lambda
    if done is not None:
        # (not done) as the data's dtype: a Python float times a bool tensor would be float32.
        discount = F.pad((~done).to(delta.dtype) * (gamma * gae_lambda), (0, delta.shape[-1] - steps))
    return discounted_reverse_cumsum(delta, discount)[..., :steps]


def _advantages_loop(
    reward: Tensor, value: Tensor, next_value: Tensor, gamma: float, gae_lambda: float,
    terminated: Tensor | None, done: Tensor | None,
) -> Tensor:
    """:func:`advantages` by the compiled CPU loop, in the memory order of ``reward`` (time-major stays so)."""
    from pgkit.ops.kernels import empty_like_layout, gae_rows, row_shape

    shape = reward.shape
    # the dtype the scan path gives: the TD errors are reward + next_value, then value subtracted in place
    dtype = torch.promote_types(reward.dtype, next_value.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float64
    flat = row_shape(shape)

    def rows(x: Tensor) -> np.ndarray:
        return x.to(dtype).broadcast_to(shape).reshape(flat).numpy()

    def mask(x: Tensor | None) -> np.ndarray:
        if x is None:
            return np.broadcast_to(np.False_, flat)
        return x.broadcast_to(shape).reshape(flat).numpy()

    r = rows(reward)
    out = empty_like_layout(r)
    gae_rows(r, rows(value), rows(next_value), mask(terminated), mask(done), gamma, gae_lambda, out)
    return torch.from_numpy(out).reshape(shape)


def _later(mask: Tensor, strict: bool = False) -> Tensor:
    """Whether ``mask`` holds at ``t`` or after (strictly after with ``strict``), along the last axis."""
    seen = mask.flip(-1).cummax(-1).values.flip(-1)
    return F.pad(seen[..., 1:], (0, 1)) if strict else seen


def _recursion_scan(delta: Tensor, steps: int, discount: float) -> Tensor:
    """``A[t] = delta[t] + discount * A[t+1]`` over the first ``steps`` of ``delta``, as the loop computes it.

    The blocked scan gives the same numbers, but its matrix products also multiply the zeros above their diagonal
    by an infinite or NaN ``delta``, so a non-finite TD error would turn later steps NaN too. When the result is
    not finite, the finite part is solved again without them and each non-finite ``delta[k]`` is carried back to
    the steps ``t <= k`` it reaches in the loop: an infinity keeps its sign (flipped by a negative discount at each
    step), turns NaN through a discount of 0 or where it meets the opposite infinity, and NaN stays NaN. A
    non-finite discount makes every advantage NaN (the loop's last step multiplies it by 0).
    """
    if not math.isfinite(discount):
        return torch.full_like(delta[..., :steps], torch.nan)
    result = discounted_reverse_cumsum(delta, discount)[..., :steps]
    if bool(torch.isfinite(result.sum())):  # finite only if every term is: one pass (and a sync on a GPU)
        return result
    delta = delta[..., :steps]
    finite = delta.isfinite()
    result = discounted_reverse_cumsum(torch.where(finite, delta, 0.0), discount)
    if discount == 0.0:  # A[t] = delta[t] + 0 * A[t+1]: NaN as soon as anything after t is not finite
        result = torch.where(finite, result, delta)
        return result.masked_fill(_later(~finite, strict=True), torch.nan)
    # With a negative discount, (-1)^t * A is the scan of (-1)^k * delta with the positive discount |discount|.
    sign = 1.0 - 2.0 * (torch.arange(steps, device=delta.device) % 2).to(delta.dtype) if discount < 0 else 1.0
    signed = delta * sign
    up, down = _later(signed == math.inf), _later(signed == -math.inf)
    infinite = torch.where(up, math.inf, -math.inf) * sign
    result = torch.where(up | down, infinite, result)
    return result.masked_fill(_later(signed.isnan()) | (up & down), torch.nan)


def gae(
    reward: Tensor,
    value: Tensor,
    next_value: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Advantages and value targets for time-major rollouts of shape ``[T, N]``.

    ``next_value[t]`` is the value of the observation that followed step ``t``: for a truncated step it must be the
    value of the real final observation, which is bootstrapped; for a terminated step it is ignored. Either end cuts
    the trace, so no advantage leaks from one episode into the next.
    """
    advantage = advantages(
        reward.T, value.T, next_value.T, gamma, gae_lambda, terminated=terminated.T, done=(terminated | truncated).T
    ).T
    return advantage, advantage + value


def gae_torchrl(
    reward: Tensor,
    value: Tensor,
    next_value: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    """:func:`gae` through TorchRL's ``generalized_advantage_estimate``, in pgkit's time-major ``[T, N]`` layout.

    TorchRL's loop over time, which is what TorchRL's own ``ppo_mujoco`` compiles on CUDA (its vectorised form, a
    truncated conv1d, is approximate and has data-dependent shapes). The trainers compile this function on CUDA
    with ``trainer.compile``; it gives :func:`gae`'s numbers to float rounding.
    """
    from torchrl.objectives.value.functional import generalized_advantage_estimate

    def theirs(x: Tensor) -> Tensor:  # [T, N] -> TorchRL's [N, T, 1]
        return x.T.unsqueeze(-1)

    advantage, target = generalized_advantage_estimate(
        gamma, gae_lambda, theirs(value), theirs(next_value), theirs(reward), theirs(terminated | truncated),
        theirs(terminated),
    )
    return advantage.squeeze(-1).T, target.squeeze(-1).T


def _split_values(values: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """``(V[:n], V[1:n+1])`` from ``n + 1`` values, or from ``n`` values with a bootstrap of 0 (as stateset-rl-core)."""
    if values.shape[-1] == steps + 1:
        return values[..., :-1], values[..., 1:]
    if values.shape[-1] == steps:
        return values, torch.nn.functional.pad(values[..., 1:], (0, 1))
    raise ValueError(f"values must have n + 1 = {steps + 1} entries (or n = {steps}), got {values.shape[-1]}")


def _kernel(name: str) -> Any:
    """A compiled loop of :mod:`pgkit.ops.kernels`, imported on first use (numba loads only when an op runs)."""
    from pgkit.ops import kernels

    return getattr(kernels, name)


def compute_gae(rewards: Any, values: Any, gamma: float = 0.99, gae_lambda: float = 0.95) -> Any:
    """GAE advantages of one trajectory (stateset-rl-core's ``compute_gae``).

    ``values`` holds ``n + 1`` estimates, the last one the bootstrap for the state after the trajectory; with ``n``
    the bootstrap is 0. Returns ``n`` advantages, as a numpy array or a tensor like the input, in the rewards' dtype
    (computed in the wider of the two). Infinite and NaN inputs give what the step-by-step recursion gives in IEEE
    arithmetic, as stateset-rl-core. Unlike stateset-rl-core, other lengths of ``values`` are an error.
    """
    torch_out = isinstance(rewards, Tensor) or isinstance(values, Tensor)
    r, v = cpu_array(rewards), cpu_array(values)
    if r is not None and v is not None:  # one compiled pass (pgkit.ops.kernels)
        if r.ndim != 1 or v.ndim != 1:
            raise ValueError(f"compute_gae takes 1-D rewards and values, got shapes {r.shape} and {v.shape}")
        n = r.shape[0]
        if v.shape[0] != n + 1 and v.shape[0] != n:
            raise ValueError(f"values must have n + 1 = {n + 1} entries (or n = {n}), got {v.shape[0]}")
        gae_trajectory = _kernel("gae_trajectory")

        if r.dtype != v.dtype:  # computed in the wider, returned in the rewards' dtype
            dtype = np.promote_types(r.dtype, v.dtype)
            out = np.empty(r.shape[0], dtype)
            gae_trajectory(r.astype(dtype), v.astype(dtype), gamma, gae_lambda, out)
            out = out.astype(r.dtype)
        else:
            out = np.empty(r.shape[0], r.dtype)
            gae_trajectory(r, v, gamma, gae_lambda, out)
        return torch.from_numpy(out) if torch_out else out
    r, v = as_tensor(rewards), as_tensor(values)
    if r.ndim != 1 or v.ndim != 1:
        raise ValueError(f"compute_gae takes 1-D rewards and values, got shapes {tuple(r.shape)} and {tuple(v.shape)}")
    dtype = torch.promote_types(r.dtype, v.dtype)
    value, next_value = _split_values(v.to(dtype), r.shape[0])
    delta = _td_errors(r.to(dtype), value, next_value, gamma)
    result = _recursion_scan(delta, r.shape[0], gamma * gae_lambda).to(r.dtype)
    return give_back(result, is_torch(rewards, values))


def batch_compute_gae(
    all_rewards: Sequence[Any], all_values: Sequence[Any], gamma: float = 0.99, gae_lambda: float = 0.95
) -> list[Any]:
    """:func:`compute_gae` for many trajectories (stateset-rl-core's ``batch_compute_gae``).

    ``all_rewards`` and ``all_values`` are sequences of 1-D arrays of any lengths, or 2-D arrays with a trajectory
    per row. On CPU each is solved by one compiled pass; CUDA tensors are packed into one zero-padded ``[B, T_max]``
    batch for the blocked scan (zeros after a trajectory's end add nothing to its advantages), and the results are
    views into one buffer. Either way in the widest dtype among them; each returned array has its own rewards'
    dtype.
    """
    if len(all_rewards) != len(all_values):
        raise ValueError(f"got {len(all_rewards)} reward arrays but {len(all_values)} value arrays")
    if len(all_rewards) == 0:
        return []
    torch_out = is_torch(all_rewards, all_values, all_rewards[0], all_values[0])
    tensors = [x for rows in (all_rewards, all_values) for x in ([rows] if isinstance(rows, Tensor) else rows)
               if isinstance(x, Tensor)]
    if fits_cpu_loops(*tensors):
        return _batch_loop(all_rewards, all_values, gamma, gae_lambda, torch_out)
    rewards, lengths, dtypes = _rows(all_rewards, torch_out)
    values, value_lengths, value_dtypes = _rows(all_values, torch_out)
    for i, (n, m) in enumerate(zip(lengths, value_lengths, strict=True)):
        if m not in (n, n + 1):
            raise ValueError(f"trajectory {i}: {n} rewards need {n + 1} values (or {n}), got {m}")
    if torch_out:
        dtype = functools.reduce(torch.promote_types, {*dtypes, *value_dtypes})
    else:
        dtype = np.result_type(*{*dtypes, *value_dtypes})
    steps = max(lengths)
    scratch = _pad(rewards, lengths, padded_length(steps), torch_out, "rewards", dtype)
    values = _pad(values, value_lengths, steps + 1, torch_out, "values", dtype)
    value = values[:, :-1]
    if any(n != steps for n in lengths):  # a short trajectory's bootstrap value must not count as a step's value
        past_end = torch.arange(steps, device=value.device) >= torch.tensor(lengths, device=value.device)[:, None]
        value = value.masked_fill(past_end, 0.0)
    delta = _td_errors(scratch[:, :steps], value, values[:, 1:], gamma, scratch=scratch)
    rows = give_back(_recursion_scan(delta, steps, gamma * gae_lambda), torch_out)
    if all(d == dtype for d in dtypes):
        return [rows[i, :n] for i, n in enumerate(lengths)]
    if torch_out:
        return [rows[i, :n].to(d) for i, (n, d) in enumerate(zip(lengths, dtypes, strict=True))]
    return [rows[i, :n].astype(d, copy=False) for i, (n, d) in enumerate(zip(lengths, dtypes, strict=True))]


def _batch_loop(all_rewards: Any, all_values: Any, gamma: float, gae_lambda: float, torch_out: bool) -> list[Any]:
    """:func:`batch_compute_gae` on CPU: one compiled pass per trajectory, into memory of its own.

    Row by row rather than packed: packing copies the whole batch into fresh memory at every call, and the page
    faults of that copy cost several times the arithmetic (measured: 2.4 ms to pack 256 x 1000 rewards and values,
    0.4 ms to solve them).
    """
    gae_trajectory = _kernel("gae_trajectory")
    rewards = [cpu_array(x) for x in all_rewards]
    values = [cpu_array(x) for x in all_values]
    dtype = np.result_type(*{x.dtype for x in rewards}, *{x.dtype for x in values})
    results = []
    for i, (r, v) in enumerate(zip(rewards, values, strict=True)):
        n = r.shape[0] if r.ndim == 1 else -1
        if v.ndim != 1 or (v.shape[0] != n + 1 and v.shape[0] != n) or n < 0:
            if r.ndim != 1 or v.ndim != 1:
                raise ValueError(f"trajectory {i}: rewards and values must be 1-D, got shapes {r.shape} and "
                                 f"{v.shape}")
            raise ValueError(f"trajectory {i}: {n} rewards need {n + 1} values (or {n}), got {v.shape[0]}")
        out = np.empty(n, dtype)
        gae_trajectory(r if r.dtype == dtype else r.astype(dtype), v if v.dtype == dtype else v.astype(dtype),
                       gamma, gae_lambda, out)
        results.append(out if r.dtype == dtype else out.astype(r.dtype))
    return [torch.from_numpy(x) for x in results] if torch_out else results

def _rows(rows: Any, torch_out: bool) -> tuple[Any, list[int], list[Any]]:
    """``rows`` ready for :func:`_pad` (a 2-D array or tensor, or a list of 1-D ones), each row's length and dtype.

    The dtypes are the float dtypes :func:`as_tensor` gives (numpy dtypes for numpy output, torch dtypes else).
    """
    if isinstance(rows, (np.ndarray, Tensor)) and rows.ndim == 2:
        table = as_tensor(rows) if torch_out or isinstance(rows, Tensor) else np.asarray(rows)
        kind = table.dtype if torch_out else float_dtype(table.dtype)
        return table, [table.shape[1]] * table.shape[0], [kind] * table.shape[0]
    if torch_out:
        tensors = [as_tensor(r) for r in rows]
        return tensors, [len(t) for t in tensors], [t.dtype for t in tensors]
    arrays = [np.asarray(r) for r in rows]
    return arrays, [len(a) for a in arrays], [float_dtype(a.dtype) for a in arrays]


_staging = threading.local()


def _staging_buffer(name: str, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """A per-thread buffer reused across calls for packing numpy inputs (fresh memory costs page faults)."""
    size = shape[0] * shape[1]
    buffer = getattr(_staging, name, None)
    if buffer is None or buffer.dtype != dtype or buffer.size < size:
        buffer = np.empty(size, dtype=dtype)
        setattr(_staging, name, buffer)
    return buffer[:size].reshape(shape)


def _pad(rows: Any, lengths: list[int], width: int, torch_out: bool, name: str, dtype: Any) -> Tensor:
    """Rows packed into a zero-padded ``[B, width]`` tensor of ``dtype`` in one copy.

    numpy rows go into a reused per-thread staging buffer (``name``), so the result is scratch, valid until the next
    call; tensor rows are stacked into fresh memory on their device.
    """
    same = all(n == lengths[0] for n in lengths)
    if torch_out:
        table = rows if isinstance(rows, Tensor) else None
        device = rows.device if table is not None else rows[0].device
        out = torch.zeros(len(lengths), width, dtype=dtype, device=device)
        if table is not None or same:
            out[:, : lengths[0]] = table if table is not None else torch.stack(rows)
        else:
            keep = torch.arange(width, device=device) < torch.tensor(lengths, device=device)[:, None]
            out[keep] = torch.cat(rows).to(dtype)
        return out
    out = _staging_buffer(name, (len(lengths), width), dtype)
    if same:
        out[:, lengths[0] :] = 0.0
        if isinstance(rows, np.ndarray):
            out[:, : lengths[0]] = rows
        else:
            np.stack(rows, out=out[:, : lengths[0]], casting="same_kind")
    else:
        out[:] = 0.0
        out[np.arange(width) < np.asarray(lengths)[:, None]] = np.concatenate(rows)
    return torch.from_numpy(out)

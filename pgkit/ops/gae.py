"""Generalised advantage estimation: one formula, for rollouts with episode ends and for stateset-style trajectories.

``delta[t] = r[t] + gamma * V(s[t+1]) * (1 - terminated[t]) - V(s[t])`` and
``A[t] = delta[t] + gamma * lambda * (1 - done[t]) * A[t+1]``, solved by :func:`discounted_reverse_cumsum`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pgkit.ops._arrays import as_tensor, give_back, is_torch
from pgkit.ops.scan import discounted_reverse_cumsum, padded_length


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

    ``scratch``, if given, receives the TD errors: a ``[..., padded_length(T)]`` buffer (``reward`` may be its first
    ``T`` columns). By default one is allocated.
    """
    steps = reward.shape[-1]
    # delta goes straight into a buffer as long as the scan wants, so the scan never copies it to pad it.
    delta = reward.new_empty(*reward.shape[:-1], padded_length(steps)) if scratch is None else scratch
    delta[..., steps:] = 0.0
    out = delta[..., :steps]
    if terminated is None:
        torch.add(reward, next_value, alpha=gamma, out=out).sub_(value)
    else:
        torch.add(reward, next_value * ~terminated, alpha=gamma, out=out).sub_(value)
    discount: float | Tensor = gamma * gae_lambda
    if done is not None:
        # (not done) as the data's dtype: a Python float times a bool tensor would be float32.
        discount = F.pad((~done).to(delta.dtype) * (gamma * gae_lambda), (0, delta.shape[-1] - steps))
    return discounted_reverse_cumsum(delta, discount)[..., :steps]


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


def _split_values(values: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """``(V[:n], V[1:n+1])`` from ``n + 1`` values, or from ``n`` values with a bootstrap of 0 (as stateset-rl-core)."""
    if values.shape[-1] == steps + 1:
        return values[..., :-1], values[..., 1:]
    if values.shape[-1] == steps:
        return values, torch.nn.functional.pad(values[..., 1:], (0, 1))
    raise ValueError(f"values must have n + 1 = {steps + 1} entries (or n = {steps}), got {values.shape[-1]}")


def compute_gae(rewards: Any, values: Any, gamma: float = 0.99, gae_lambda: float = 0.95) -> Any:
    """GAE advantages of one trajectory (stateset-rl-core's ``compute_gae``).

    ``values`` holds ``n + 1`` estimates, the last one the bootstrap for the state after the trajectory; with ``n``
    the bootstrap is 0. Returns ``n`` advantages, as a numpy array or a tensor like the input. Unlike
    stateset-rl-core, other lengths of ``values`` are an error, and a NaN can make later advantages of its trajectory
    NaN too (not only those up to it).
    """
    r, v = as_tensor(rewards), as_tensor(values)
    if r.ndim != 1 or v.ndim != 1:
        raise ValueError(f"compute_gae takes 1-D rewards and values, got shapes {tuple(r.shape)} and {tuple(v.shape)}")
    value, next_value = _split_values(v.to(r.dtype), r.shape[0])
    return give_back(advantages(r, value, next_value, gamma, gae_lambda), is_torch(rewards, values))


def batch_compute_gae(
    all_rewards: Sequence[Any], all_values: Sequence[Any], gamma: float = 0.99, gae_lambda: float = 0.95
) -> list[Any]:
    """:func:`compute_gae` for a list of trajectories of any lengths (stateset-rl-core's ``batch_compute_gae``).

    The trajectories are packed into one zero-padded ``[B, T_max]`` batch and solved together; zeros after a
    trajectory's end add nothing to its advantages. The returned arrays are views into one result buffer.
    """
    if len(all_rewards) != len(all_values):
        raise ValueError(f"got {len(all_rewards)} reward arrays but {len(all_values)} value arrays")
    if not all_rewards:
        return []
    torch_out = is_torch(*all_rewards[:1], *all_values[:1])
    lengths = [len(r) for r in all_rewards]
    value_lengths = [len(v) for v in all_values]
    for i, (n, m) in enumerate(zip(lengths, value_lengths, strict=True)):
        if m not in (n, n + 1):
            raise ValueError(f"trajectory {i}: {n} rewards need {n + 1} values (or {n}), got {m}")
    steps = max(lengths)
    scratch = _pad(all_rewards, lengths, padded_length(steps), torch_out, "rewards")
    values = _pad(all_values, value_lengths, steps + 1, torch_out, "values").to(scratch.dtype)
    value = values[:, :-1]
    if any(n != steps for n in lengths):  # a short trajectory's bootstrap value must not count as a step's value
        past_end = torch.arange(steps, device=value.device) >= torch.tensor(lengths, device=value.device)[:, None]
        value = value.masked_fill(past_end, 0.0)
    result = advantages(scratch[:, :steps], value, values[:, 1:], gamma, gae_lambda, scratch=scratch)
    rows = give_back(result, torch_out)
    return [rows[i, :n] for i, n in enumerate(lengths)]


_staging = threading.local()


def _staging_buffer(name: str, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """A per-thread buffer reused across calls for packing numpy inputs (fresh memory costs page faults)."""
    size = shape[0] * shape[1]
    buffer = getattr(_staging, name, None)
    if buffer is None or buffer.dtype != dtype or buffer.size < size:
        buffer = np.empty(size, dtype=dtype)
        setattr(_staging, name, buffer)
    return buffer[:size].reshape(shape)


def _pad(rows: Sequence[Any], lengths: list[int], width: int, torch_out: bool, name: str) -> Tensor:
    """Rows packed into a zero-padded ``[B, width]`` tensor in one copy.

    numpy rows go into a reused per-thread staging buffer (``name``), so the result is scratch, valid until the next
    call; tensor rows are stacked into fresh memory on their device.
    """
    if torch_out:
        tensors = [as_tensor(r) for r in rows]
        out = tensors[0].new_zeros(len(rows), width)
        keep = torch.arange(width, device=out.device) < torch.tensor(lengths, device=out.device)[:, None]
        if all(n == lengths[0] for n in lengths):
            out[:, : lengths[0]] = torch.stack(tensors)
        else:
            out[keep] = torch.cat(tensors)
        return out
    dtype = np.result_type(*(np.asarray(r).dtype for r in rows[:1]), np.float32)
    out = _staging_buffer(name, (len(rows), width), dtype)
    if all(n == lengths[0] for n in lengths):
        out[:, lengths[0] :] = 0.0
        np.stack(rows, out=out[:, : lengths[0]], casting="same_kind")
    else:
        out[:] = 0.0
        out[np.arange(width) < np.asarray(lengths)[:, None]] = np.concatenate(rows)
    return torch.from_numpy(out)

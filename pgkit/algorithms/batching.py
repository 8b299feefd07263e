"""From a rollout buffer ``[T, N]`` to the rows the update trains on, and minibatches of them.

A feedforward policy trains on single transitions: the rows are the buffer flattened, and a minibatch is any set of
rows. A recurrent policy trains on sequences: each env's rollout is cut into chunks of ``bptt_horizon`` steps
(truncated BPTT), the rows are laid out chunk by chunk (chunk ``k`` of env ``n`` is rows ``(k N + n) H`` to
``(k N + n + 1) H - 1``), and a minibatch is a set of whole chunks, as sb3-contrib's RecurrentPPO and CleanRL's
``ppo_atari_lstm.py`` do. Each chunk starts from the state the rollout stored for it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict
from torch import Tensor
from torch.utils.data import IterableDataset


class MinibatchIndices(IterableDataset):
    """Yields ``epochs`` fresh permutations of ``range(units)``, each split into ``num_minibatches`` parts.

    A unit is a row (feedforward) or a chunk of rows (recurrent). With ``stacked`` it yields them all at once, as one
    ``[epochs * num_minibatches, size]`` tensor (the same permutations, drawn in the same order), for modules that
    loop over minibatches inside one training step. ``generator`` is called at each pass for the permutations'
    generator (the module seeds one per iteration, so a resumed run draws the same ones; Lightning prefetches the
    first batch before the iteration's hooks run).
    """

    def __init__(
        self,
        units: int,
        num_minibatches: int,
        epochs: int,
        stacked: bool = False,
        generator: Callable[[], torch.Generator | None] = lambda: None,
    ) -> None:
        self.units, self.num_minibatches, self.epochs = units, num_minibatches, epochs
        self.stacked, self.generator = stacked, generator

    def __iter__(self):
        g = self.generator()
        parts = (torch.randperm(self.units, generator=g).view(self.num_minibatches, -1) for _ in range(self.epochs))
        if self.stacked:
            yield torch.cat(list(parts))
        else:
            for part in parts:
                yield from part

    def __len__(self) -> int:
        return 1 if self.stacked else self.epochs * self.num_minibatches


def chunk_rows(buffer: TensorDict, horizon: int) -> TensorDict:
    """The buffer ``[T, N]`` as rows ``[T N]`` in chunk order (a copy), with ``sequence_start`` marking where a
    sequence begins: the first row of every chunk and every episode start."""
    steps, envs = buffer.batch_size
    chunks = steps // horizon

    def rearrange(x: Tensor) -> Tensor:
        return x.reshape(chunks, horizon, envs, *x.shape[2:]).transpose(1, 2).reshape(steps * envs, *x.shape[2:])

    rows = buffer.apply(rearrange, batch_size=[steps * envs])
    first = torch.arange(steps * envs, device=rows.device) % horizon == 0
    rows["sequence_start"] = rows["episode_start"] | first
    return rows


def rows_to_steps(x: Tensor, steps: int, envs: int, horizon: int | None) -> Tensor:
    """Row values back in the buffer's ``[T, N]`` layout (``horizon`` None: rows are the buffer flattened)."""
    if horizon is None:
        return x.reshape(steps, envs, *x.shape[1:])
    chunks = steps // horizon
    return x.reshape(chunks, envs, horizon, *x.shape[1:]).transpose(1, 2).reshape(steps, envs, *x.shape[1:])


def unit_rows(indices: Tensor, rows_per_unit: int) -> Tensor:
    """The rows of units ``indices`` ``[..., m]`` -> ``[..., m * rows_per_unit]``, each unit's rows in order."""
    if rows_per_unit == 1:
        return indices
    offsets = torch.arange(rows_per_unit, device=indices.device)
    return (indices.unsqueeze(-1) * rows_per_unit + offsets).flatten(-2)


def chunk_state_rows(states: Tensor, indices: Tensor, horizon: int) -> Tensor:
    """``[m * horizon, S]``: the stored state of each chunk in ``indices`` at the chunk's first row, 0 elsewhere
    (where it is read only after an episode start, whose state is 0)."""
    out = states.new_zeros(indices.numel() * horizon, states.shape[-1])
    out[::horizon] = states[indices]
    return out


__all__ = ["MinibatchIndices", "chunk_rows", "chunk_state_rows", "rows_to_steps", "unit_rows"]

"""Recurrent cores (LSTM, GRU) and the replay of whole sequences in one batched call.

A core's state is one flat tensor per env, ``[B, state_size]`` (an LSTM's ``h`` and ``c`` of every layer side by
side), so the rollout can store it, reset it at episode starts and save it with ``*`` and ``copy_``, whatever the
core.

Training replays the rollout in *sequences*: runs of consecutive rows that start at a BPTT chunk's first step or at
an episode start and run to the next such row. Each sequence starts from the state the rollout stored for it (zero
after an episode start), so no reset is needed inside a sequence, and all sequences of a minibatch go through the
RNN in one call (no Python loop over time). sb3-contrib's RecurrentPPO instead loops over time steps in Python
whenever a sequence of its minibatch starts an episode, which is most of the time.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

RecurrentKind = Literal["lstm", "gru"]


class Sequences:
    """The sequences of a batch of rows: a new sequence begins at every row where ``starts`` is true (the first row
    must be one), and ``state[row]`` at those rows is the state to begin it with (other rows are ignored).

    The layout is computed once and shared by every core that replays these rows (actor, critic, target or
    reference networks): the rows are scattered into a zero-padded ``[longest, sequences, F]`` batch, which the RNN
    runs as one call, and gathered back. PyTorch's CPU RNNs run a padded batch through oneDNN's fused kernels; a
    ``PackedSequence`` takes a per-step path whose backward zero-fills a full-size gradient buffer at every step
    (measured 3 to 9 times slower on RL minibatches, quadratic in the sequence length).
    """

    def __init__(self, starts: Tensor, state: Tensor) -> None:
        rows = starts.shape[0]
        starts = starts.bool().clone()
        starts[0] = True
        index = torch.arange(rows, device=starts.device)
        first = index[starts]  # first row of each sequence
        #: Which sequence each row belongs to, and its position in it.
        self.sequence = starts.long().cumsum(0) - 1
        self.position = index - first[self.sequence]
        self.length = int(torch.diff(first, append=first.new_tensor([rows])).max())
        self.count = first.numel()
        #: The initial state of each sequence.
        self.initial_state = state[first]

    def pad(self, rows: Tensor) -> Tensor:
        """``[R, F]`` rows as a zero-padded time-major batch ``[longest, sequences, F]``."""
        padded = rows.new_zeros(self.length, self.count, *rows.shape[1:])
        padded[self.position, self.sequence] = rows
        return padded

    def unpad(self, padded: Tensor) -> Tensor:
        """The rows of a padded output, back in row order."""
        return padded[self.position, self.sequence]


class RecurrentCore(nn.Module):
    """An ``nn.LSTM`` or ``nn.GRU`` (batch second, as cuDNN prefers) behind a flat-state interface."""

    def __init__(
        self, kind: RecurrentKind, input_size: int, hidden_size: int, num_layers: int = 1, ortho_init: bool = True
    ) -> None:
        super().__init__()
        rnn = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = rnn(input_size, hidden_size, num_layers)
        self.kind, self.hidden_size, self.num_layers = kind, hidden_size, num_layers
        self.out_dim = hidden_size
        if ortho_init:  # as CleanRL's ppo_atari_lstm.py: orthogonal weights (gain 1), zero biases
            for name, param in self.rnn.named_parameters():
                if name.startswith("weight"):
                    nn.init.orthogonal_(param, 1.0)
                else:
                    nn.init.zeros_(param)

    @property
    def state_size(self) -> int:
        """Width of the flat state: ``num_layers * hidden_size``, twice for an LSTM (``h`` and ``c``)."""
        return (2 if self.kind == "lstm" else 1) * self.num_layers * self.hidden_size

    def _hidden(self, state: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """``[B, state_size]`` -> the RNN's ``h0`` (and ``c0``), each ``[num_layers, B, hidden_size]``."""
        parts = state.reshape(state.shape[0], -1, self.num_layers, self.hidden_size)
        parts = parts.permute(1, 2, 0, 3).contiguous()  # [k, num_layers, B, hidden]
        return (parts[0], parts[1]) if self.kind == "lstm" else parts[0]

    def _flat(self, hidden: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        parts = torch.stack(hidden if isinstance(hidden, tuple) else (hidden,))  # [k, num_layers, B, hidden]
        return parts.permute(2, 0, 1, 3).reshape(parts.shape[2], -1)

    def step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One time step for a batch of envs: ``([B, hidden], next state [B, state_size])``."""
        out, hidden = self.rnn(x.unsqueeze(0), self._hidden(state))
        return out.squeeze(0), self._flat(hidden)

    def replay(self, x: Tensor, sequences: Sequences, state: Tensor) -> Tensor:
        """Outputs ``[R, hidden]`` for rows ``x`` ``[R, F]`` grouped into ``sequences`` that start from ``state``
        (this core's columns of ``sequences.initial_state``)."""
        out, _ = self.rnn(sequences.pad(x), self._hidden(state))
        return sequences.unpad(out)


__all__ = ["RecurrentCore", "RecurrentKind", "Sequences"]

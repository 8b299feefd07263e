"""Observation normalisation and reward scaling as ``nn.Module``s.

Their statistics are registered buffers, so they are saved in every checkpoint, restored on resume, moved by
``.to(device)`` and frozen simply by not calling ``update``. This is the fix for the classic failure of wrapper-based
normalisation (SB3 #468, CleanRL #532): statistics living in an env wrapper that the checkpoint never sees.

On CPU the arithmetic runs on numpy views of the buffers (same memory, so checkpoints see every update). These run
once per environment step on a handful of numbers, where torch's per-op dispatch (~4 us, some 20 ops a step) cost
more than the environment itself; numpy's is ~1 us. The formulas are written once, with operators that both array
kinds share.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from pgkit.ops.welford import merge_moments

_EPS = 1e-8

Array = Tensor | np.ndarray


def standardize(x: Array, mean: Array, var: Array, clip: float) -> Array:
    """``clip((x - mean) / sqrt(var + eps), -clip, clip)`` on tensors or numpy arrays."""
    return ((x - mean) / (var + _EPS) ** 0.5).clip(-clip, clip)


def _moments(x: Array) -> tuple[Array, Array | float]:
    """Mean and population variance along the first dimension."""
    if x.shape[0] == 1:  # the common case (one env): skip the reductions, numpy's var alone costs ~10 us
        return x[0], 0.0
    if isinstance(x, np.ndarray):
        return x.mean(0), x.var(0)
    return x.mean(0), x.var(0, correction=0)


class RunningMeanStd(nn.Module):
    """Running mean and population variance of a stream of batches, kept in float64 buffers."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        # Starts at a tiny count like SB3/gymnasium, so the first batch dominates without dividing by zero.
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

        self._arrays: tuple[Array, Array, Array] | None = None
        self.on_host = True
        """Whether the statistics live on the CPU (and are computed with numpy)."""

    def _apply(self, fn, recurse: bool = True):
        # .to(), .cuda(), .double() replace the buffers: drop the cached views. load_state_dict copies in place.
        self._arrays = None
        out = super()._apply(fn, recurse)
        self.on_host = self.mean.device.type == "cpu"
        return out

    def arrays(self) -> tuple[Array, Array, Array]:
        """``(mean, var, count)``: numpy views of the buffers on CPU, the buffers themselves elsewhere."""
        if self._arrays is None:
            buffers = (self.mean, self.var, self.count)
            self._arrays = tuple(b.numpy() for b in buffers) if self.on_host else buffers
        return self._arrays

    def as_operand(self, x: Array) -> Array:
        """``x`` in float64, as the kind of array the statistics are computed with (never tracked by autograd)."""
        if isinstance(x, Tensor):
            x = x.detach()
        if self.on_host:
            return np.asarray(x.cpu().numpy() if isinstance(x, Tensor) else x, dtype=np.float64)
        return torch.as_tensor(x, device=self.mean.device).to(torch.float64)

    def as_output(self, x: Array) -> Tensor:
        """A float32 tensor on the statistics' device."""
        if isinstance(x, np.ndarray):
            return torch.from_numpy(x.astype(np.float32)).to(self.mean.device)
        return x.to(device=self.mean.device, dtype=torch.float32)

    def update(self, batch: Array) -> None:
        """Fold ``batch`` (leading dim = samples) into the statistics."""
        x = self.as_operand(batch)
        state = self.arrays()
        merged = merge_moments(*state, *_moments(x), float(x.shape[0]))
        for buffer, value in zip(state, merged, strict=True):
            buffer[...] = value


    def snapshot(self) -> tuple[Tensor, Tensor, Tensor]:
        """Copies of ``(mean, var, count)``, for :meth:`merge_ranks` after this process's updates."""
        return self.mean.clone(), self.var.clone(), self.count.clone()

    @torch.no_grad()
    def merge_ranks(self, snapshot: tuple[Tensor, Tensor, Tensor], all_gather) -> None:
        """Make every rank's statistics the same: each rank's data since ``snapshot`` (recovered by undoing the
        merge) is gathered and merged, in rank order, into the snapshot. ``all_gather`` stacks a tensor from every
        rank (``LightningModule.all_gather``)."""
        mean0, var0, count0 = snapshot
        count1 = self.count.clone()
        n = count1 - count0
        if float(n) > 0:
            mean_b = (self.mean * count1 - mean0 * count0) / n
            delta = mean_b - mean0
            m2_b = self.var * count1 - var0 * count0 - delta * delta * (count0 * n / count1)
            var_b = (m2_b / n).clamp_min(0.0)
        else:
            mean_b, var_b = torch.zeros_like(mean0), torch.zeros_like(var0)
        gathered = all_gather(torch.stack([n.expand_as(mean_b), mean_b, var_b]))  # [world, 3, *shape]
        mean, var, count = mean0, var0, count0
        for rank_n, rank_mean, rank_var in gathered:
            if float(rank_n.flatten()[0]) > 0:
                mean, var, count = merge_moments(mean, var, count, rank_mean, rank_var, rank_n.flatten()[0])
        self.mean.copy_(mean)
        self.var.copy_(var)
        self.count.copy_(count)


class ObservationNormalizer(nn.Module):
    """``clip((obs - mean) / sqrt(var + eps), -clip, clip)`` with running statistics, computed in float64 and
    returned as float32."""

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, enabled: bool = True, layout=None) -> None:
        super().__init__()
        self.enabled = enabled
        self.clip = clip
        self.rms = RunningMeanStd(shape)
        self.layout = layout
        """The :class:`~pgkit.environments.observations.ObservationLayout` of the space, when built for one."""

    def running_stats(self) -> list[RunningMeanStd]:
        """The statistics that change with training (merged across DDP ranks)."""
        return [self.rms] if self.enabled else []

    def update(self, obs: Array) -> None:
        """Add a batch of raw observations (tensor or numpy) to the statistics (no-op when disabled)."""
        if self.enabled:
            self.rms.update(_rows(obs))

    def forward(self, obs: Array) -> Tensor:
        """Normalise raw observations (tensor or numpy) into a float32 tensor; never changes the statistics."""
        obs = _rows(obs)
        if not self.enabled:
            return self.rms.as_output(obs.detach() if isinstance(obs, Tensor) else np.asarray(obs))
        mean, var, _ = self.rms.arrays()
        return self.rms.as_output(standardize(self.rms.as_operand(obs), mean, var, self.clip))


def _rows(obs: Array) -> Array:
    """A batch of observations as ``[B, D]``: a Box of several dims arrives as ``[B, *shape]``."""
    return obs if obs.ndim == 2 else obs.reshape(obs.shape[0], -1)


class RewardScaler(nn.Module):
    """Divide rewards by the running std of the discounted return, then clip (CleanRL/SB3 ``norm_reward``).

    The per-env discounted return restarts at every episode end (terminated or truncated), as in SB3's
    ``VecNormalize``: a new episode's return owes nothing to the previous one.
    """

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled
        self.gamma = gamma
        self.clip = clip
        self.return_rms = RunningMeanStd(())
        self.register_buffer("returns", torch.zeros(num_envs, dtype=torch.float64))

    def update(self, reward: Array, done: Array) -> None:
        """Advance the discounted returns with this step's rewards, update the statistics, then reset ended ones.

        ``reward`` and ``done`` (one per env) may be tensors or numpy arrays."""
        if not self.enabled:
            return
        rms = self.return_rms
        returns = self.returns.numpy() if rms.on_host else self.returns
        returns *= self.gamma
        returns += rms.as_operand(reward)
        rms.update(returns)
        if rms.on_host:
            returns[done.cpu().numpy() if isinstance(done, Tensor) else done] = 0.0
        else:
            returns[torch.as_tensor(done, device=returns.device)] = 0.0

    def forward(self, reward: Array) -> Tensor:
        """Scale rewards (tensor or numpy) by the current statistics into a float32 tensor; never changes them."""
        return self.return_rms.as_output(self.scale(reward))

    def scale(self, reward: Array) -> Array:
        """:meth:`forward` in float64 and in the statistics' array kind (numpy on CPU): what the rollout stores."""
        rms = self.return_rms
        if not self.enabled:
            return rms.as_operand(reward)
        _, var, _ = rms.arrays()
        return standardize(rms.as_operand(reward), 0.0, var, self.clip)

"""What DDP adds to an iteration: totals over ranks, and the end-of-run check that the ranks agree."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pgkit.errors import TrainingError

if TYPE_CHECKING:
    from pgkit.algorithms.base import OnPolicyModule


def iteration_totals(module: OnPolicyModule, episodes: list[tuple[float, int]], ev: float) -> list[float]:
    """``[env steps, episodes, return sum, length sum, explained variance]`` of this iteration over all ranks
    (sums, and the mean of the explained variances); this rank's own numbers without DDP."""
    local = [module.steps_taken * module.num_envs, len(episodes), sum(r for r, _ in episodes),
             sum(n for _, n in episodes), ev]
    if not module.distributed:
        return local
    gathered = module.all_gather(torch.tensor(local, dtype=torch.float64, device=module.device))
    totals = gathered.sum(0).tolist()
    totals[4] = float(gathered[:, 4].mean())
    return totals


def gather_env_states(module: OnPolicyModule, packed: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Every rank's packed env state (None where a rank has none), by rank as text, on every rank: rank 0 writes
    them all into the one checkpoint file."""
    if not module.distributed:
        return {} if packed is None else {str(module.global_rank): packed}
    gathered: list[torch.Tensor | None] = [None] * module.trainer.world_size
    torch.distributed.all_gather_object(gathered, packed)
    return {str(rank): state for rank, state in enumerate(gathered) if state is not None}


def check_ranks_agree(module: OnPolicyModule) -> None:
    """Raise :class:`TrainingError` unless every rank ends with the same parameters and normaliser statistics
    (DDP averages gradients; :meth:`RunningMeanStd.merge_ranks` syncs the statistics)."""
    # Everything but the per-env discounted returns of the reward scaler: those belong to each rank's own envs.
    state = [
        t.detach().double().flatten()
        for key, t in module.state_dict().items()
        if t.is_floating_point() and not key.endswith("reward_scaler.returns")
    ]
    checksum = torch.cat(state)
    gathered = module.all_gather(torch.stack([checksum.sum(), checksum.abs().sum(), (checksum * checksum).sum()]))
    if not bool((gathered == gathered[0]).all()):
        raise TrainingError(f"DDP ranks ended with different parameters or statistics: {gathered.tolist()}")
    if module.trainer.is_global_zero:
        print(f"ddp: {module.trainer.world_size} ranks agree on parameters and normaliser statistics "
              f"(checksum {float(gathered[0][1]):.6f})")

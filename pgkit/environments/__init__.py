"""Environments: creation from ids or entry points, vector envs, and normalisation modules."""

from pgkit.environments.make import check_env_id, flat_dim, make_env, make_vec_env, seed_list
from pgkit.environments.normalization import ObservationNormalizer, RewardScaler, RunningMeanStd

__all__ = [
    "ObservationNormalizer",
    "RewardScaler",
    "RunningMeanStd",
    "check_env_id",
    "flat_dim",
    "make_env",
    "make_vec_env",
    "seed_list",
]

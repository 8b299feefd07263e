"""Pure tensor functions shared by every algorithm. One implementation of each formula lives here.

The stateset-rl-core API (``compute_gae``, ``batch_compute_gae``, ``compute_group_advantages``, ``normalize_rewards``,
``clip_rewards``, ``compute_reward_statistics``, ``compute_gspo_importance_ratios``, ``apply_gspo_clipping``,
``compute_ppo_surrogate``) takes numpy arrays or torch tensors, on any device, and returns the kind it was given.
The trainers call the same functions, or the tensor functions those are built from.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

# stateset-rl-core exports its version too: pgkit's, read here rather than from the `pgkit` package (no circle).
try:
    __version__ = _version("pgkit")
except _PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

from pgkit.ops.gae import advantages, batch_compute_gae, compute_gae, gae, gae_torchrl
from pgkit.ops.group import (
    compute_group_advantages,
    group_advantages,
    group_baseline,
    leave_one_out_advantages,
    pareto_scores,
    relative_scores,
)
from pgkit.ops.rewards import clip_rewards, clip_rewards_py, compute_reward_statistics, normalize_rewards
from pgkit.ops.scan import discounted_reverse_cumsum
from pgkit.ops.statistics import explained_variance, normalize
from pgkit.ops.surrogate import (
    apply_gspo_clipping,
    clipped_surrogate,
    compute_gspo_importance_ratios,
    compute_ppo_surrogate,
    kl_k3,
    sequence_ratio,
)
from pgkit.ops.vtrace import vtrace
from pgkit.ops.welford import merge_moments

__all__ = [
    "__version__",
    "advantages",
    "apply_gspo_clipping",
    "batch_compute_gae",
    "clip_rewards",
    "clip_rewards_py",
    "clipped_surrogate",
    "compute_gae",
    "compute_group_advantages",
    "compute_gspo_importance_ratios",
    "compute_ppo_surrogate",
    "compute_reward_statistics",
    "discounted_reverse_cumsum",
    "explained_variance",
    "gae",
    "gae_torchrl",
    "group_advantages",
    "group_baseline",
    "kl_k3",
    "leave_one_out_advantages",
    "merge_moments",
    "normalize",
    "normalize_rewards",
    "pareto_scores",
    "relative_scores",
    "sequence_ratio",
    "vtrace",
]

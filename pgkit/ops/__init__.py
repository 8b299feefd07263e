"""Pure tensor functions shared by every algorithm. One implementation of each formula lives here."""

from pgkit.ops.gae import explained_variance, gae, normalize
from pgkit.ops.welford import merge_moments

__all__ = ["explained_variance", "gae", "merge_moments", "normalize"]

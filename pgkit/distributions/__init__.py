"""Action distributions: Normal, TanhNormal, Categorical and MultiCategorical, plus the heads that build them."""

from pgkit.distributions.base import ActionDistribution
from pgkit.distributions.categorical import Categorical, MultiCategorical
from pgkit.distributions.heads import (
    DistributionName,
    LogStdMode,
    allowed_distributions,
    make_head,
)
from pgkit.distributions.normal import Normal
from pgkit.distributions.tanh_normal import TanhNormal

__all__ = [
    "ActionDistribution",
    "Categorical",
    "DistributionName",
    "LogStdMode",
    "MultiCategorical",
    "Normal",
    "TanhNormal",
    "allowed_distributions",
    "make_head",
]

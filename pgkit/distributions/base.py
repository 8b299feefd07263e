"""The interface every action distribution implements.

A distribution separates the *raw* sample, which is what the rollout buffer stores and what ``log_prob`` is
evaluated on, from the *env* action that is sent to the environment. For a Gaussian the raw sample is the
unclipped action; for a tanh-Gaussian it is the pre-tanh sample, so the exact log-probability never has to be
recovered through a clamped ``atanh``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor


class ActionDistribution(ABC):
    """A batch of action distributions, one per row of the policy's input."""

    #: Whether ``entropy()`` is exact (``True``) or a single-sample Monte-Carlo estimate.
    analytic_entropy: bool = True

    @abstractmethod
    def sample(self) -> Tensor:
        """Draw a raw sample (no gradient) of shape ``[B, *action_shape]``."""

    @abstractmethod
    def log_prob(self, raw: Tensor) -> Tensor:
        """Log-density of raw samples, summed over action dimensions: shape ``[B]``."""

    @abstractmethod
    def entropy(self) -> Tensor:
        """Entropy per row, shape ``[B]``."""

    @abstractmethod
    def mode(self) -> Tensor:
        """The most likely raw action, used for deterministic evaluation."""

    @abstractmethod
    def kl(self, other: ActionDistribution) -> Tensor:
        """``KL(self || other)`` per row, shape ``[B]``, for a distribution of the same family."""

    def sample_with_log_prob(self) -> tuple[Tensor, Tensor]:
        """A raw sample (no gradient) and its log-density; families override it where the sampling noise gives the
        log-density in fewer ops (the rollout calls it once per env step)."""
        raw = self.sample()
        return raw, self.log_prob(raw)

    def to_env(self, raw: Tensor) -> Tensor:
        """Map a raw sample to the action given to the environment (identity unless overridden)."""
        return raw


def check_same_family(a: ActionDistribution, b: ActionDistribution) -> None:
    """Raise if a KL between different families is requested."""
    if type(a) is not type(b):
        raise TypeError(f"KL between {type(a).__name__} and {type(b).__name__} is not defined")

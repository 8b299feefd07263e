"""Categorical (Discrete) and multi-categorical (MultiDiscrete) distributions over logits."""

from __future__ import annotations

import torch
from torch import Tensor

from pgkit.distributions.base import ActionDistribution, check_same_family


class Categorical(ActionDistribution):
    """One categorical per row. Raw samples are integer indices of shape ``[B]``."""

    def __init__(self, logits: Tensor) -> None:
        self.log_p = torch.log_softmax(logits, dim=-1)

    def sample(self) -> Tensor:
        with torch.no_grad():
            return torch.multinomial(self.log_p.exp(), 1).squeeze(-1)

    def log_prob(self, raw: Tensor) -> Tensor:
        return self.log_p.gather(-1, raw.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> Tensor:
        return -(self.log_p.exp() * self.log_p).sum(dim=-1)

    def mode(self) -> Tensor:
        return self.log_p.argmax(dim=-1)

    def kl(self, other: ActionDistribution) -> Tensor:
        check_same_family(self, other)
        assert isinstance(other, Categorical)
        return (self.log_p.exp() * (self.log_p - other.log_p)).sum(dim=-1)


class MultiCategorical(ActionDistribution):
    """Independent categoricals, one per MultiDiscrete dimension. Raw samples have shape ``[B, D]``."""

    def __init__(self, logits: Tensor, nvec: list[int]) -> None:
        self.parts = [Categorical(x) for x in torch.split(logits, nvec, dim=-1)]

    def sample(self) -> Tensor:
        return torch.stack([p.sample() for p in self.parts], dim=-1)

    def log_prob(self, raw: Tensor) -> Tensor:
        return torch.stack([p.log_prob(raw[..., i]) for i, p in enumerate(self.parts)], dim=-1).sum(dim=-1)

    def entropy(self) -> Tensor:
        return torch.stack([p.entropy() for p in self.parts], dim=-1).sum(dim=-1)

    def mode(self) -> Tensor:
        return torch.stack([p.mode() for p in self.parts], dim=-1)

    def kl(self, other: ActionDistribution) -> Tensor:
        check_same_family(self, other)
        assert isinstance(other, MultiCategorical)
        return torch.stack([p.kl(q) for p, q in zip(self.parts, other.parts, strict=True)], dim=-1).sum(dim=-1)

"""Observation encoders: processed observations -> a feature vector, one encoder per leaf, concatenated.

This is SB3's ``CombinedExtractor`` semantics: images go through a CNN (NatureCNN by default: Mnih et al. 2015, as
SB3 and CleanRL's Atari scripts), vectors pass through flat, discrete leaves become one-hot vectors, and the results
are concatenated in leaf order. A plain vector space needs no encoder at all (the actor-critic skips it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from pgkit.environments.observations import Leaf, ObservationLayout
from pgkit.networks.mlp import HIDDEN_GAIN

if TYPE_CHECKING:
    from tensordict import TensorDict

ImageEncoding = Literal["cnn", "flatten"]


def conv_output_size(height: int, width: int, kernels: Sequence[int], strides: Sequence[int]) -> tuple[int, int]:
    """Spatial size after valid (unpadded) convolutions; raises ``ValueError`` when a layer gets less than its
    kernel."""
    for layer, (kernel, stride) in enumerate(zip(kernels, strides, strict=True)):
        if height < kernel or width < kernel:
            raise ValueError(f"an image of {height}x{width} entering conv layer {layer + 1} is smaller than its kernel "
                             f"{kernel}")
        height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
    return height, width


class ImageEncoder(nn.Module):
    """``uint8 [B, H, W, C]`` (or ``[B, C, H, W]`` with ``channels_first``) -> ``[B, features]``: scale to [0, 1],
    convolutions with ReLU, flatten, linear, ReLU."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        channels: Sequence[int],
        kernels: Sequence[int],
        strides: Sequence[int],
        features: int,
        ortho_init: bool,
        channels_first: bool = False,
    ) -> None:
        super().__init__()
        self.channels_first = channels_first
        if channels_first:
            in_channels, height, width = shape
        else:
            height, width, in_channels = shape
        out_h, out_w = conv_output_size(height, width, kernels, strides)
        layers: list[nn.Module] = []
        for out_channels, kernel, stride in zip(channels, kernels, strides, strict=True):
            layers += [nn.Conv2d(in_channels, out_channels, kernel, stride), nn.ReLU()]
            in_channels = out_channels
        layers += [nn.Flatten(), nn.Linear(in_channels * out_h * out_w, features), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.out_dim = features
        if ortho_init:  # CleanRL's layer_init for its Atari networks
            for layer in self.net:
                if isinstance(layer, nn.Conv2d | nn.Linear):
                    nn.init.orthogonal_(layer.weight, HIDDEN_GAIN)
                    nn.init.zeros_(layer.bias)

    def forward(self, image: Tensor) -> Tensor:
        image = image if self.channels_first else image.permute(0, 3, 1, 2)
        return self.net(image.float().div(255.0))


class ScaledFlatten(nn.Module):
    """An image as a flat vector scaled to [0, 1] (``policy.encoder.image: flatten``)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.out_dim = math.prod(shape)

    def forward(self, image: Tensor) -> Tensor:
        return image.flatten(1).float().div(255.0)


class OneHot(nn.Module):
    """Category indices ``[B, K]`` (``start`` already subtracted) -> concatenated one-hot vectors ``[B, sum(nvec)]``."""

    def __init__(self, nvec: Sequence[int]) -> None:
        super().__init__()
        offsets = torch.tensor([0, *list(nvec)[:-1]]).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.out_dim = int(sum(nvec))

    def forward(self, index: Tensor) -> Tensor:
        out = torch.zeros(index.shape[0], self.out_dim, device=index.device)
        return out.scatter_(1, index.long() + self.offsets, 1.0)


class Flat(nn.Module):
    """A vector leaf as it is (already flat, float32 and normalised)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.out_dim = width

    def forward(self, vector: Tensor) -> Tensor:
        return vector


class ObservationEncoder(nn.Module):
    """One encoder per leaf of an :class:`ObservationLayout`, outputs concatenated into ``[B, out_dim]``."""

    def __init__(
        self,
        layout: ObservationLayout,
        image: ImageEncoding = "cnn",
        channels: Sequence[int] = (32, 64, 64),
        kernels: Sequence[int] = (8, 4, 3),
        strides: Sequence[int] = (4, 2, 1),
        features: int = 512,
        ortho_init: bool = True,
    ) -> None:
        super().__init__()
        self.layout = layout

        def build(leaf: Leaf) -> nn.Module:
            if leaf.kind == "image":
                if image == "cnn":
                    return ImageEncoder(leaf.shape, channels, kernels, strides, features, ortho_init,
                                        leaf.channels_first)
                return ScaledFlatten(leaf.shape)
            if leaf.kind == "discrete":
                return OneHot(leaf.nvec)
            return Flat(leaf.shape[0])

        self.parts = nn.ModuleDict({leaf.key.replace(".", "__"): build(leaf) for leaf in layout.leaves})
        self.out_dim = sum(part.out_dim for part in self.parts.values())

    def forward(self, obs: Tensor | TensorDict) -> Tensor:
        if not self.layout.structured:
            return next(iter(self.parts.values()))(obs)
        return torch.cat([part(obs[leaf.key]) for leaf, part in zip(self.layout.leaves, self.parts.values(),
                                                                      strict=True)], dim=-1)


__all__ = ["ImageEncoder", "ObservationEncoder", "OneHot", "conv_output_size"]

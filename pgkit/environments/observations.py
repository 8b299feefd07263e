"""Observations as the policy sees them: the leaves of a space, and the module that normalises and batches them.

gymnasium gives observations as arrays, or as dicts and tuples of arrays (``Dict`` and ``Tuple`` spaces, possibly
nested). pgkit keeps their structure instead of flattening it, so an image stays an image for a CNN. Each array is
a *leaf* of one of three kinds:

- ``vector``: any other ``Box`` (any shape, flattened) or a ``MultiBinary``. Box vectors are normalised by running
  statistics when ``env.normalize_obs``; MultiBinary leaves are 0/1 already and pass through.
- ``image``: a ``uint8`` ``Box`` of 3 dims, channel-last as gymnasium gives them (or channel-first when the first
  dim is the smallest, as a frame stack ``[4, 84, 84]``: SB3's rule). Stored as ``uint8`` (4x less memory than
  float32), scaled to [0, 1] by the encoder, never normalised by running statistics.
- ``discrete``: ``Discrete`` or ``MultiDiscrete``, stored as int64 category indices (``start`` subtracted) and
  one-hot encoded by the encoder.

A processed observation is a tensor ``[B, ...]`` for an unstructured space, or a ``TensorDict`` of leaves keyed by
their path (``"image"``, ``"state.velocity"``, ``"0"`` for a tuple's first entry) for a Dict or Tuple space. A plain
vector space (the common case) keeps :class:`ObservationNormalizer` and its numpy fast path, unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from pgkit.environments.normalization import ObservationNormalizer, RunningMeanStd

if TYPE_CHECKING:
    from tensordict import TensorDict

LeafKind = Literal["vector", "image", "discrete"]


@dataclass(frozen=True)
class Leaf:
    """One array of an observation: where it is, what kind it is, and its size."""

    path: tuple[str | int, ...]
    """Keys and indices that reach it in a raw observation (empty for an unstructured space)."""
    kind: LeafKind
    shape: tuple[int, ...]
    """Per-sample shape as stored: ``(D,)`` for vectors, ``(H, W, C)`` for images, ``(K,)`` for discrete leaves."""
    nvec: tuple[int, ...] = ()
    """Discrete leaves: categories of each of the ``K`` components."""
    start: tuple[int, ...] = ()
    """Discrete leaves: the smallest value of each component (subtracted when stored)."""
    normalize: bool = False
    """Whether running-statistics normalisation may apply (Box vectors only)."""
    channels_first: bool = False
    """Images: stored ``[C, H, W]`` rather than ``[H, W, C]``."""

    @property
    def key(self) -> str:
        """The leaf's name in a processed observation (dotted path)."""
        return ".".join(str(p) for p in self.path) or "obs"

    @property
    def image_size(self) -> tuple[int, int, int]:
        """Images: ``(height, width, channels)`` whatever the layout."""
        if self.channels_first:
            return self.shape[1], self.shape[2], self.shape[0]
        return self.shape[0], self.shape[1], self.shape[2]

    @property
    def dtype(self) -> torch.dtype:
        """How the leaf is stored in a rollout buffer."""
        return {"vector": torch.float32, "image": torch.uint8, "discrete": torch.int64}[self.kind]


def _is_image(space: gym.spaces.Box) -> bool:
    return space.dtype == np.uint8 and len(space.shape) == 3


def _leaves(space: gym.Space, path: tuple[str | int, ...]) -> Iterator[Leaf]:
    if isinstance(space, gym.spaces.Dict):
        for key, sub in space.spaces.items():
            if not isinstance(key, str) or not key or "." in key:
                raise ValueError(f"Dict observation key {key!r} at {'.'.join(map(str, path)) or 'top level'} "
                                 "must be a non-empty string without '.'")
            yield from _leaves(sub, (*path, key))
    elif isinstance(space, gym.spaces.Tuple):
        for i, sub in enumerate(space.spaces):
            yield from _leaves(sub, (*path, i))
    elif isinstance(space, gym.spaces.Box):
        if _is_image(space):
            shape = tuple(int(s) for s in space.shape)
            yield Leaf(path, "image", shape, channels_first=int(np.argmin(shape)) == 0)
        else:
            yield Leaf(path, "vector", (int(np.prod(space.shape)),), normalize=True)
    elif isinstance(space, gym.spaces.MultiBinary):
        yield Leaf(path, "vector", (int(np.prod(space.shape)),))
    elif isinstance(space, gym.spaces.Discrete):
        yield Leaf(path, "discrete", (1,), (int(space.n),), (int(space.start),))
    elif isinstance(space, gym.spaces.MultiDiscrete):
        nvec = tuple(int(n) for n in np.asarray(space.nvec).flatten())
        start = tuple(int(s) for s in np.broadcast_to(np.asarray(space.start), space.nvec.shape).flatten())
        yield Leaf(path, "discrete", (len(nvec),), nvec, start)
    else:
        raise ValueError(f"observation space {type(space).__name__} is not supported (Box, Discrete, MultiDiscrete, "
                         "MultiBinary, and Dict or Tuple of those)")


@dataclass(frozen=True)
class ObservationLayout:
    """The leaves of an observation space, and whether observations are structured (Dict or Tuple)."""

    leaves: tuple[Leaf, ...]
    structured: bool

    @classmethod
    def from_space(cls, space: gym.Space) -> ObservationLayout:
        """Raises ``ValueError`` naming the part of ``space`` pgkit cannot encode."""
        structured = isinstance(space, gym.spaces.Dict | gym.spaces.Tuple)
        leaves = tuple(_leaves(space, ()))
        if not leaves:
            raise ValueError(f"observation space {space} has no arrays")
        return cls(leaves, structured)

    @property
    def plain_vector(self) -> bool:
        """A single float vector: the fast path of :class:`ObservationNormalizer`."""
        return not self.structured and self.leaves[0].kind == "vector"

    @property
    def has_image(self) -> bool:
        """Whether any leaf is an image."""
        return any(leaf.kind == "image" for leaf in self.leaves)

    def raw_leaves(self, obs: Any) -> list[Any]:
        """The arrays of a raw (batched) observation, in leaf order."""
        out = []
        for leaf in self.leaves:
            value = obs
            for part in leaf.path:
                value = value[part]
            out.append(value)
        return out

    def allocate(self, batch: Sequence[int], device: torch.device | str) -> Tensor | TensorDict:
        """Zeros for processed observations of batch shape ``batch`` (a rollout buffer's ``obs`` entry)."""
        tensors = {leaf.key: torch.zeros(*batch, *leaf.shape, dtype=leaf.dtype, device=device) for leaf in self.leaves}
        if not self.structured:
            return tensors[self.leaves[0].key]
        from tensordict import TensorDict  # here, not at the top: validating a config needs no tensordict

        return TensorDict(tensors, batch_size=list(batch), device=device)

    def stack(self, observations: Sequence[Any]) -> Any:
        """A batch from single raw observations (e.g. the final observations of some sub-envs)."""
        if not self.structured:
            return np.stack([np.asarray(o) for o in observations])
        return _rebuild(self, [np.stack([np.asarray(v) for v in values])
                               for values in zip(*(self.raw_leaves(o) for o in observations), strict=True)])

    def add_batch_dim(self, obs: Any) -> Any:
        """One raw observation as a batch of one."""
        if not self.structured:
            return np.asarray(obs)[None]
        return _rebuild(self, [np.asarray(v)[None] for v in self.raw_leaves(obs)])


def _rebuild(layout: ObservationLayout, arrays: list[np.ndarray]) -> dict:
    """A nested dict of leaves (tuples become dicts keyed by index; leaves are looked up by path either way)."""
    root: dict = {}
    for leaf, array in zip(layout.leaves, arrays, strict=True):
        node = root
        for part in leaf.path[:-1]:
            node = node.setdefault(part, {})
        node[leaf.path[-1]] = array
    return root


class StructuredObservations(nn.Module):
    """Processes raw observations of any supported space into what the encoder takes (see the module docstring).

    Each normalised vector leaf has its own :class:`ObservationNormalizer` (so its own statistics in every checkpoint);
    images and discrete leaves carry no statistics.
    """

    def __init__(self, layout: ObservationLayout, clip: float = 10.0, enabled: bool = True) -> None:
        super().__init__()
        self.layout = layout
        # Follows .to(device), so leaves without statistics (images, discrete) land where the normalised ones do.
        self.register_buffer("device_anchor", torch.empty(0), persistent=False)
        self.normalizers = nn.ModuleDict({
            _module_key(leaf): ObservationNormalizer(leaf.shape, clip, enabled and leaf.normalize)
            for leaf in layout.leaves if leaf.kind == "vector"
        })

    def running_stats(self) -> list[RunningMeanStd]:
        """The statistics that change with training (merged across DDP ranks)."""
        return [n.rms for n in self.normalizers.values() if n.enabled]

    def update(self, obs: Any) -> None:
        """Add a batch of raw observations to the statistics of the normalised leaves."""
        for leaf, value in zip(self.layout.leaves, self.layout.raw_leaves(obs), strict=True):
            if leaf.kind == "vector":
                self.normalizers[_module_key(leaf)].update(_flat(value))

    def forward(self, obs: Any) -> Tensor | TensorDict:
        """Raw observations (numpy or tensors, batched) -> a tensor or TensorDict on the statistics' device."""
        device = self.device_anchor.device
        out: dict[str, Tensor] = {}
        for leaf, value in zip(self.layout.leaves, self.layout.raw_leaves(obs), strict=True):
            if leaf.kind == "vector":
                out[leaf.key] = self.normalizers[_module_key(leaf)](_flat(value))
            elif leaf.kind == "image":
                out[leaf.key] = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value,
                                                dtype=torch.uint8, device=device)
            else:
                index = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value,
                                        device=device).long().reshape(-1, len(leaf.nvec))
                out[leaf.key] = index - torch.tensor(leaf.start, device=device)
        if not self.layout.structured:
            return out[self.layout.leaves[0].key]
        from tensordict import TensorDict  # here, not at the top: validating a config needs no tensordict

        batch = next(iter(out.values())).shape[0]
        return TensorDict(out, batch_size=[batch], device=device)


def describe_space(space: gym.Space) -> str:
    """A short description of a space for messages: ``Box(4,) float32``, ``Dict(camera, speed)``."""
    if isinstance(space, gym.spaces.Dict):
        return f"Dict({', '.join(map(str, space.spaces))})"
    if isinstance(space, gym.spaces.Tuple):
        return f"Tuple({', '.join(describe_space(s) for s in space.spaces)})"
    if isinstance(space, gym.spaces.Box):
        return f"Box{tuple(space.shape)} {space.dtype}"
    return str(space)


def _module_key(leaf: Leaf) -> str:
    """ModuleDict keys may not contain dots."""
    return leaf.key.replace(".", "__")


def _flat(value: Any) -> Any:
    """A batch of vectors of any shape as ``[B, D]`` (a view when possible)."""
    if isinstance(value, Tensor):
        return value.reshape(value.shape[0], -1)
    array = np.asarray(value)
    return array if array.ndim == 2 else array.reshape(array.shape[0], -1)


def make_observation_processor(space: gym.Space, clip: float, enabled: bool) -> nn.Module:
    """:class:`ObservationNormalizer` for a plain vector space (its fast path), else :class:`StructuredObservations`.

    Both take raw batched observations in ``update`` and ``forward`` and list their statistics in ``running_stats``.
    """
    layout = ObservationLayout.from_space(space)
    if layout.plain_vector:
        leaf = layout.leaves[0]
        return ObservationNormalizer(leaf.shape, clip, enabled and leaf.normalize, layout=layout)
    return StructuredObservations(layout, clip, enabled)


__all__ = ["Leaf", "ObservationLayout", "StructuredObservations", "describe_space", "make_observation_processor"]

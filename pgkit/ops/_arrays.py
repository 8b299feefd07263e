"""Accept numpy arrays or torch tensors and hand back the same kind, so `pgkit.ops` serves both worlds.

numpy arrays are wrapped with ``torch.from_numpy`` (no copy) and the results unwrapped with ``Tensor.numpy`` (no copy),
so the arithmetic is written once, in torch, and runs on whatever device a tensor input lives on.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

ArrayT = TypeVar("ArrayT", np.ndarray, Tensor)


def float_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype :func:`as_tensor` computes a numpy ``dtype`` in: float32 and float64 stay, all else is float64."""
    return dtype if np.issubdtype(dtype, np.floating) and dtype != np.float16 else np.dtype(np.float64)


def as_tensor(x: Any) -> Tensor:
    """A float tensor view of ``x``: tensors pass through (ints become float64), arrays and sequences are wrapped."""
    if isinstance(x, Tensor):
        return x if x.is_floating_point() else x.to(torch.float64)
    array = np.asarray(x)
    if float_dtype(array.dtype) != array.dtype:
        array = array.astype(np.float64)
    if not array.flags.writeable:
        array = array.copy()  # torch.from_numpy warns on read-only memory; it never writes to inputs here.
    return torch.from_numpy(array)


def is_torch(*xs: Any) -> bool:
    """Whether the result should be a tensor: when any input is one."""
    return any(isinstance(x, Tensor) for x in xs)


def give_back(t: Tensor, torch_out: bool) -> Any:
    """``t`` as a tensor or as a numpy array (CPU tensors only come from numpy inputs)."""
    return t if torch_out else t.numpy()


def scalar_back(t: Tensor, torch_out: bool) -> Any:
    """A 0-d result: a tensor for tensor inputs (no device sync), a Python float for numpy inputs."""
    return t if torch_out else float(t)


def fits_cpu_loops(*xs: Tensor) -> bool:
    """Whether tensors can go through the compiled CPU loops of :mod:`pgkit.ops.kernels`: on the CPU, with no
    gradient to track, not in half precision or complex (those stay in torch), and not being traced by
    ``torch.compile`` (which keeps the pure-torch path)."""
    if torch.compiler.is_compiling():
        return False
    return all(x.device.type == "cpu" and not x.requires_grad and x.dtype not in _TORCH_ONLY and not x.is_complex()
               for x in xs)


_TORCH_ONLY = (torch.float16, torch.bfloat16)


def cpu_array(x: Any) -> np.ndarray | None:
    """A float numpy view of ``x`` for the compiled CPU loops (float32 and float64 kept, everything else float64), or
    None when ``x`` is a tensor that must stay in torch (on a GPU, needing a gradient, or in half precision)."""
    if type(x) is np.ndarray and x.dtype.char in "fd":  # the common case, in a fraction of a microsecond
        return x
    if isinstance(x, Tensor):
        if not fits_cpu_loops(x):
            return None
        x = x.numpy() if x.is_floating_point() else x.numpy().astype(np.float64)
    array = np.asarray(x)
    return array if float_dtype(array.dtype) == array.dtype else array.astype(np.float64)


def cpu_arrays(*xs: Any) -> list[np.ndarray] | None:
    """:func:`cpu_array` of each, or None if any must stay in torch."""
    arrays = [cpu_array(x) for x in xs]
    return None if any(a is None for a in arrays) else arrays


def back(array: np.ndarray, torch_out: bool) -> Any:
    """A result of the CPU loops as the caller's kind: a tensor sharing its memory, or the array itself."""
    return torch.from_numpy(array) if torch_out else array

"""gymnasium spaces as plain data, so a checkpoint carries its observation and action spaces.

``pgkit.load(ckpt).predict``, ``pgkit export`` and the MLflow model rebuild the policy from the checkpoint alone:
they need the spaces, not the environment, and so never create an env (or import the code an env id names).
The data is made of dicts, lists, strings, ints and floats only, which ``torch.load(weights_only=True)`` reads
without running code, and :func:`space_from_data` checks every field before it builds anything: a crafted file
gets a ``ValueError`` naming the problem, never a huge allocation or an unexpected type.

Written by hand because gymnasium's own serialisation (``to_jsonable``) is for samples of a space, not the space.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

#: Most scalars one space (all its leaves together) may describe: a 4 x 84 x 84 Atari stack is 28224.
MAX_ELEMENTS = 1 << 24
#: Deepest nesting of Dict and Tuple spaces.
MAX_DEPTH = 16
#: Most categories a Discrete or MultiDiscrete space may have in all (each is an output of the policy head or a
#: one-hot input).
MAX_CATEGORIES = 1 << 20
_BOX_DTYPES = ("float16", "float32", "float64", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32")
_INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32")


def space_to_data(space: gym.Space) -> dict[str, Any]:
    """A plain-data description of ``space`` (Box, Discrete, MultiDiscrete, MultiBinary, Dict, Tuple)."""
    if isinstance(space, gym.spaces.Box):
        return {"type": "Box", "shape": [int(s) for s in space.shape], "dtype": str(space.dtype),
                "low": _bound(space.low), "high": _bound(space.high)}
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": np.asarray(space.nvec).tolist(),
                "start": np.broadcast_to(np.asarray(space.start), space.nvec.shape).tolist(),
                "dtype": str(space.dtype)}
    if isinstance(space, gym.spaces.MultiBinary):
        n = space.n
        return {"type": "MultiBinary", "n": int(n) if np.ndim(n) == 0 else [int(s) for s in np.ravel(n)]}
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "spaces": [[key, space_to_data(sub)] for key, sub in space.spaces.items()]}
    if isinstance(space, gym.spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_data(sub) for sub in space.spaces]}
    raise ValueError(f"space {type(space).__name__} cannot be stored as data")


def _bound(values: np.ndarray) -> float | list[float]:
    """One number when every entry is the same (the common case), else the flat list."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size and (flat == flat[0]).all():
        return float(flat[0])
    return flat.tolist()


def space_from_data(data: Any, where: str = "space") -> gym.Space:
    """The space described by :func:`space_to_data`'s output; ``ValueError`` naming the field for anything else."""
    space, _ = _build(data, where, 0)
    return space


def _build(data: Any, where: str, depth: int) -> tuple[gym.Space, int]:
    """The space and its number of scalars."""
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ValueError(f"{where}: not a space description")
    kind = data["type"]
    if kind == "Box":
        shape = _shape(data.get("shape"), where)
        size = math.prod(shape)
        dtype = data.get("dtype")
        if dtype not in _BOX_DTYPES:
            raise ValueError(f"{where}.dtype: {dtype!r} is not a numeric dtype")
        low, high = (_bounds(data.get(name), size, f"{where}.{name}") for name in ("low", "high"))
        if np.isnan(low).any() or np.isnan(high).any() or (low > high).any():
            raise ValueError(f"{where}: bounds must be numbers with low <= high")
        if dtype in _INT_DTYPES:
            info = np.iinfo(dtype)
            low, high = np.clip(low, info.min, info.max), np.clip(high, info.min, info.max)
        low, high = (np.asarray(b, dtype=dtype).reshape(shape) for b in (low, high))
        return gym.spaces.Box(low, high, shape=tuple(shape), dtype=dtype), size
    if kind == "Discrete":
        n, start = _integer(data.get("n"), f"{where}.n", 1), _integer(data.get("start"), f"{where}.start")
        if n > MAX_CATEGORIES:
            raise ValueError(f"{where}.n: more than {MAX_CATEGORIES} categories (got {n})")
        return gym.spaces.Discrete(n, start=start), 1
    if kind == "MultiDiscrete":
        nvec = np.asarray(_integers(data.get("nvec"), f"{where}.nvec", 1), dtype=np.int64)
        start = np.asarray(_integers(data.get("start"), f"{where}.start"), dtype=np.int64)
        if nvec.shape != start.shape or nvec.size == 0:
            raise ValueError(f"{where}: nvec and start must be non-empty and of the same shape")
        if int(nvec.sum()) > MAX_CATEGORIES:
            raise ValueError(f"{where}.nvec: more than {MAX_CATEGORIES} categories in all")
        dtype = data.get("dtype", "int64")
        if dtype not in _INT_DTYPES:
            raise ValueError(f"{where}.dtype: {dtype!r} is not an integer dtype")
        return gym.spaces.MultiDiscrete(nvec, dtype=dtype, start=start), int(nvec.size)
    if kind == "MultiBinary":
        n = data.get("n")
        if isinstance(n, int) and not isinstance(n, bool):
            return gym.spaces.MultiBinary(_shape([n], where)[0]), n
        shape = _shape(n, where)
        return gym.spaces.MultiBinary(shape), math.prod(shape)
    if kind in ("Dict", "Tuple"):
        entries = data.get("spaces")
        if not isinstance(entries, list) or not entries or len(entries) > 1024:
            raise ValueError(f"{where}.spaces: expected a list of 1 to 1024 spaces")
        subs, total = [], 0
        for i, entry in enumerate(entries):
            if kind == "Dict":
                if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
                    raise ValueError(f"{where}.spaces[{i}]: expected [key, space]")
                key, entry = entry
                label = f"{where}[{key!r}]"
            else:
                key, label = i, f"{where}[{i}]"
            sub, size = _build(entry, label, depth + 1)
            total += size
            if total > MAX_ELEMENTS:
                raise ValueError(f"{where}: more than {MAX_ELEMENTS} scalars")
            subs.append((key, sub))
        if kind == "Dict":
            return gym.spaces.Dict(subs), total  # a list of pairs keeps the env's order (a dict would be sorted)
        return gym.spaces.Tuple([sub for _, sub in subs]), total
    raise ValueError(f"{where}.type: unknown space type {kind!r}")


def _integer(value: Any, where: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 2**62:
        raise ValueError(f"{where}: expected an integer (got {value!r:.40})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{where}: must be at least {minimum} (got {value})")
    return value


def _integers(value: Any, where: str, minimum: int | None = None) -> list[Any]:
    """A (possibly nested) list of integers, at most :data:`MAX_ELEMENTS` of them."""
    flat: list[int] = []

    def walk(v: Any, depth: int) -> Any:
        if isinstance(v, list) and depth < 8:
            return [walk(x, depth + 1) for x in v]
        flat.append(_integer(v, where, minimum))
        if len(flat) > MAX_ELEMENTS:
            raise ValueError(f"{where}: more than {MAX_ELEMENTS} entries")
        return v

    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list")
    walk(value, 0)
    try:
        np.asarray(value, dtype=np.int64)
    except ValueError:
        raise ValueError(f"{where}: ragged lists") from None
    return value


def _shape(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or len(value) > 8:
        raise ValueError(f"{where}.shape: expected a list of at most 8 sizes")
    shape = [_integer(s, f"{where}.shape", 1) for s in value]
    if math.prod(shape) > MAX_ELEMENTS:
        raise ValueError(f"{where}.shape: more than {MAX_ELEMENTS} scalars (got {shape})")
    return shape


def _bounds(value: Any, size: int, where: str) -> np.ndarray:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return np.full(size, float(value))
    if isinstance(value, list) and len(value) == size and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return np.asarray(value, dtype=np.float64)
    raise ValueError(f"{where}: expected a number or a list of {size} numbers")


__all__ = ["space_from_data", "space_to_data"]

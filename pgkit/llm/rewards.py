"""Reward functions and reward computers for text, applied after collection.

A reward function has TRL's signature ``f(prompts, completions, **columns) -> list[float]``: ``prompts`` as given in
the records, ``completions`` as text (or, for chat prompts, TRL's ``[[{"role": "assistant", "content": ...}]]``),
every other column of the records as a keyword argument, plus ``env_steps`` and ``progress`` (the fraction of the
run's budget done), for curricula. Several functions are combined by a reward computer: the weighted sum
(``absolute``), its rank within each prompt's group (``relative``), or the Pareto rank over the functions
(``pareto``), the same computers as GRPO on gymnasium episodes.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from pgkit.errors import ConfigError, TrainingError
from pgkit.ops import pareto_scores, relative_scores

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def completion_text(completion: Any) -> str:
    """The text of a completion given as a string or as TRL's chat messages."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content", "")) for m in completion)


def exact_number(completions: Sequence[Any], answer: Sequence[float], **_: Any) -> list[float]:
    """1 when the completion's answer equals ``answer``, else 0. The answer is the number inside
    ``<answer>...</answer>`` when there is one, else the last number of the completion."""
    rewards = []
    for completion, target in zip(completions, answer, strict=True):
        text = completion_text(completion)
        tagged = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
        found = _NUMBER.findall(tagged[-1] if tagged else text)
        rewards.append(float(bool(found) and math.isclose(float(found[-1]), float(target), abs_tol=1e-6)))
    return rewards


def character_fraction(completions: Sequence[Any], character: Sequence[str], **_: Any) -> list[float]:
    """The share of the completion's characters that are ``character`` (0 for an empty completion)."""
    out = []
    for completion, char in zip(completions, character, strict=True):
        text = completion_text(completion)
        out.append(text.count(char) / len(text) if text else 0.0)
    return out


def length_penalty(completions: Sequence[Any], target_length: int = 20, **_: Any) -> list[float]:
    """``-|len - target_length| / target_length``: 0 at the target length, negative away from it."""
    return [-abs(len(completion_text(c)) - target_length) / target_length for c in completions]


def load_function(entry: str) -> Callable[..., Any]:
    """The function named by ``module:function``; raises :class:`ConfigError` when it does not import."""
    module_name, sep, attr = entry.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"config error: reward.functions: {entry!r} is not a module:function entry point")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        message = f"cannot import {module_name!r} for {entry!r}: {exc}"
        raise ConfigError(f"config error: reward.functions: {message}") from None
    except AttributeError:
        raise ConfigError(f"config error: reward.functions: module {module_name!r} has no {attr!r}") from None
    if not callable(function):
        raise ConfigError(f"config error: reward.functions: {entry!r} is not callable")
    return function


def _numbers(values: Any, count: int, entry: str) -> list[float] | str:
    """The values as floats, or a description of what is wrong with them."""
    try:
        values = list(values)
    except TypeError:
        return f"returned {type(values).__name__}, not a list of numbers"
    if len(values) != count:
        return f"returned {len(values)} values for {count} completions"
    bad = next((v for v in values if isinstance(v, bool) or not isinstance(v, int | float)), None)
    if bad is not None:
        return f"returned a non-number ({bad!r:.40})"
    return [float(v) for v in values]


class RewardFunctions:
    """The configured reward functions, called as TRL calls them, with their outputs checked."""

    def __init__(self, specs: Sequence[Any]) -> None:
        self.specs = list(specs)
        self.functions = [load_function(spec.function) for spec in self.specs]
        self.names = [spec.name for spec in self.specs]
        self.weights = torch.tensor([spec.weight for spec in self.specs], dtype=torch.float64)

    def __call__(self, prompts: list[Any], completions: list[Any], columns: dict[str, list[Any]],
                 env_steps: int, progress: float, check: bool = False) -> Tensor:
        """``[N, functions]`` values; a function that raises or returns something else than N numbers stops the
        run (:class:`TrainingError`), or is bad input when ``check`` (the probe before training)."""
        out = []
        for spec, function in zip(self.specs, self.functions, strict=True):
            try:
                values = function(prompts=prompts, completions=completions, env_steps=env_steps, progress=progress,
                                  **columns, **spec.kwargs)
            except Exception as exc:
                message = f"reward function {spec.function} raised {exc.__class__.__name__}: {exc}"
                raise (ConfigError(f"config error: reward.functions: {message}") if check else
                       TrainingError(message)) from exc
            numbers = _numbers(values, len(completions), spec.function)
            if isinstance(numbers, str):
                message = f"reward function {spec.function} {numbers}"
                raise ConfigError(f"config error: reward.functions: {message}") if check else TrainingError(message)
            out.append(numbers)
        return torch.tensor(out, dtype=torch.float64).T

    def weighted(self, values: Tensor) -> Tensor:
        """The weighted sum of each completion's values, ``[N]``."""
        return values @ self.weights


def compute_scores(values: Tensor, weights: Tensor, computer: str, group_size: int) -> Tensor:
    """Each completion's score, ``[N]``, from the functions' values ``[N, K]`` (N = prompts x group_size, grouped
    by prompt): the weighted sum, its rank in the group, or the Pareto rank over the K functions in the group."""
    if computer == "absolute":
        return values @ weights
    groups = values.shape[0] // group_size
    if computer == "relative":
        return relative_scores((values @ weights).view(groups, group_size)).reshape(-1)
    return pareto_scores(values.view(groups, group_size, -1)).reshape(-1)


__all__ = ["RewardFunctions", "character_fraction", "compute_scores", "exact_number", "length_penalty"]

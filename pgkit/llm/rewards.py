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
import numbers
import re
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
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


def _numbers(values: Any, count: int) -> list[float] | str:
    """The values as floats (None, TRL's "not applicable", as NaN), or a description of what is wrong with them.
    Python and numpy numbers of any dtype are numbers; booleans are not."""
    if isinstance(values, torch.Tensor | np.ndarray):
        values = values.tolist() if values.ndim == 1 else values
    try:
        values = list(values)
    except TypeError:
        return f"returned {type(values).__name__}, not a list of numbers"
    if len(values) != count:
        return f"returned {len(values)} values for {count} completions"
    out = []
    for v in values:
        if v is None:
            out.append(math.nan)
        elif isinstance(v, bool | np.bool_) or not isinstance(v, numbers.Real | np.number) or isinstance(
                v, np.complexfloating):
            return f"returned a non-number ({v!r:.40})"
        else:
            out.append(float(v))
    return out


class _Overrun(Exception):
    """Raised inside a reward function that ran past its time."""


def _call_with_timeout(function: Callable[..., Any], timeout: float | None, kwargs: dict[str, Any]) -> Any:
    """``function(**kwargs)``, raising :class:`TimeoutError` after ``timeout`` seconds.

    In the main thread (training's) the call runs there, as in TRL, so functions that use signals themselves
    (math_verify's ``SIGALRM``) still work; a watchdog thread sends the main thread ``SIGUSR2``, whose handler
    raises inside the function, interrupting even a blocking call. Elsewhere the call runs in a daemon thread that
    is abandoned on timeout (Python cannot stop a thread)."""
    if timeout is None:
        return function(**kwargs)
    if threading.current_thread() is threading.main_thread():
        def overrun(signum: int, frame: Any) -> None:
            raise _Overrun

        previous = signal.signal(signal.SIGUSR2, overrun)
        main = threading.main_thread().ident
        watchdog = threading.Timer(timeout, lambda: signal.pthread_kill(main, signal.SIGUSR2))
        watchdog.daemon = True
        watchdog.start()
        try:
            return function(**kwargs)
        except _Overrun:
            raise TimeoutError(f"did not return within reward.timeout_s={timeout:g} s") from None
        finally:
            watchdog.cancel()
            watchdog.join()
            signal.signal(signal.SIGUSR2, previous)
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = function(**kwargs)
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    worker = threading.Thread(target=target, name="pgkit-reward", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"did not return within reward.timeout_s={timeout:g} s")
    if "error" in result:
        raise result["error"]
    return result["value"]


class RewardFunctions:
    """The configured reward functions, called as TRL calls them, with their outputs checked.

    As in TRL, a function returns one number per completion, or None where it does not apply: the weighted sum
    skips it (a completion no function applies to gets 0, and is reported). A NaN or infinite value stops the run
    naming the function and the prompt. Each call is bounded by ``reward.timeout_s``."""

    def __init__(self, specs: Sequence[Any], timeout: float | None = None) -> None:
        self.specs = list(specs)
        self.functions = [load_function(spec.function) for spec in self.specs]
        self.names = [spec.name for spec in self.specs]
        self.weights = torch.tensor([spec.weight for spec in self.specs], dtype=torch.float64)
        self.timeout = timeout

    def __call__(self, prompts: list[Any], completions: list[Any], columns: dict[str, list[Any]],
                 env_steps: int, progress: float, check: bool = False) -> Tensor:
        """``[N, functions]`` values, NaN where a function returned None; a function that raises, hangs past the
        timeout, or returns something else than N numbers (or a NaN or infinity) stops the run
        (:class:`TrainingError`), or is bad input when ``check`` (the probe before training)."""
        out = []
        for spec, function in zip(self.specs, self.functions, strict=True):
            def fail(problem: str, entry: str = spec.function) -> Exception:
                message = f"reward function {entry} {problem}"
                return ConfigError(f"config error: reward.functions: {message}") if check else TrainingError(message)

            kwargs = dict(prompts=prompts, completions=completions, env_steps=env_steps, progress=progress,
                          **columns, **spec.kwargs)
            try:
                values = _call_with_timeout(function, self.timeout, kwargs)
            except TimeoutError as exc:
                raise fail(str(exc)) from None
            except Exception as exc:
                raise fail(f"raised {exc.__class__.__name__}: {exc}") from exc
            if not isinstance(values, list | tuple | torch.Tensor | np.ndarray):
                try:  # a generator or map: read it once
                    values = list(values)
                except TypeError:
                    raise fail(f"returned {type(values).__name__}, not a list of numbers") from None
            numbers_ = _numbers(values, len(completions))
            if isinstance(numbers_, str):
                raise fail(numbers_)
            raws = values.tolist() if isinstance(values, torch.Tensor | np.ndarray) else list(values)
            for i, (value, raw) in enumerate(zip(numbers_, raws, strict=True)):
                if raw is not None and not math.isfinite(value):
                    raise fail(f"returned {value} for completion {i + 1} of prompt {str(prompts[i])!r:.80}")
            out.append(numbers_)
        return torch.tensor(out, dtype=torch.float64).T

    def weighted(self, values: Tensor) -> Tensor:
        """The weighted sum of each completion's applicable values, ``[N]`` (0 where none applies, as TRL)."""
        return weighted_sum(values, self.weights)


def weighted_sum(values: Tensor, weights: Tensor) -> Tensor:
    """``sum_k w_k v_k`` over the values that apply (not NaN) of each row of ``values`` ``[N, K]``."""
    return torch.nansum(values * weights, dim=1)


def compute_scores(values: Tensor, weights: Tensor, computer: str, group_size: int) -> Tensor:
    """Each completion's score, ``[N]``, from the functions' values ``[N, K]`` (N = prompts x group_size, grouped
    by prompt): the weighted sum, its rank in the group, or the Pareto rank over the K functions in the group."""
    if computer == "absolute":
        return weighted_sum(values, weights)
    groups = values.shape[0] // group_size
    if computer == "relative":
        return relative_scores(weighted_sum(values, weights).view(groups, group_size)).reshape(-1)
    # Pareto: a value that does not apply is the worst in its objective.
    objectives = values.nan_to_num(nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    return pareto_scores(objectives.view(groups, group_size, -1)).reshape(-1)


__all__ = ["RewardFunctions", "character_fraction", "compute_scores", "exact_number", "length_penalty"]

"""Reward functions for the language-model tests, importable as ``llm_rewards:<name>``."""

from __future__ import annotations

CALLS: list[dict] = []


def record_call(prompts, completions, **kwargs):
    """Remembers what it was called with; rewards the completion's length."""
    CALLS.append({"prompts": prompts, "completions": completions, **kwargs})
    return [float(len(c if isinstance(c, str) else c[0]["content"])) for c in completions]


def wrong_length(prompts, completions, **kwargs):
    return [0.0] * (len(completions) + 1)


def not_numbers(prompts, completions, **kwargs):
    return ["high"] * len(completions)


def raises_later(prompts, completions, env_steps=0, **kwargs):
    """Fine at first; raises once 96 completions have been trained on (mid-run)."""
    if env_steps >= 96:
        raise RuntimeError("the grader went away")
    return [0.5] * len(completions)


def sometimes_none(prompts, completions, **kwargs):
    """TRL's "not applicable": None for every other completion, 1 for the rest."""
    return [None if i % 2 == 0 else 1.0 for i in range(len(completions))]


def never_applies(prompts, completions, **kwargs):
    return [None] * len(completions)


def nan_for_the_second(prompts, completions, **kwargs):
    return [float("nan") if i == 1 else 0.0 for i in range(len(completions))]


def numpy_float32(prompts, completions, **kwargs):
    import numpy as np

    return np.full(len(completions), 0.25, dtype=np.float32)


def numpy_scalars(prompts, completions, **kwargs):
    import numpy as np

    return [np.float16(0.5), np.int64(1), np.float64(2.0), np.uint8(3)][: len(completions)] + [
        np.float32(0.0)] * max(0, len(completions) - 4)


def hangs(prompts, completions, **kwargs):
    import time

    time.sleep(3600)


def uses_sigalrm(prompts, completions, **kwargs):
    """As math_verify does: a SIGALRM of its own around the work (only possible in the main thread)."""
    import signal

    previous = signal.signal(signal.SIGALRM, lambda *_: None)
    signal.alarm(5)
    try:
        return [1.0] * len(completions)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def a_generator(prompts, completions, **kwargs):
    return (0.5 for _ in completions)

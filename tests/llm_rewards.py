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

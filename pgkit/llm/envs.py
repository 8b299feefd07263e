"""Text environments: what the model is asked, and what the world answers between its turns.

The interface, for any env given as ``module:Class`` in ``env.id``:

- ``reset(record) -> prompt``: the prompt of an episode (text, or chat messages), from a prompt record;
- ``step(completion) -> observation | None``: the model's text for one turn; the text the env appends before the
  model's next turn, or None when the episode ends;
- ``is_terminal() -> bool``: whether the episode has ended;
- ``stop_strings``: strings that end a turn early (a closing tool tag), besides the end-of-sequence token.

The env's observations are appended to the token sequence and never trained on (masked out of the loss): the
policy's actions are the tokens it generated, one per step. Rewards are the reward functions' business, on the whole
episode's text once it ends.
"""

from __future__ import annotations

import ast
import importlib
import operator
import re
from typing import Any, ClassVar

from pgkit.errors import ConfigError


class SingleTurnEnv:
    """The prompt, one completion, done."""

    stop_strings: ClassVar[list[str]] = []

    def __init__(self) -> None:
        self.done = False

    def reset(self, record: dict[str, Any]) -> Any:
        self.done = False
        return record["prompt"]

    def step(self, completion: str) -> str | None:
        self.done = True
        return None

    def is_terminal(self) -> bool:
        return self.done


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.USub: operator.neg, ast.UAdd: operator.pos}


def evaluate_arithmetic(expression: str) -> float:
    """The value of an expression of numbers, ``+ - * /`` and parentheses; anything else raises ``ValueError``
    (never ``eval``: the model writes the expression)."""

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](walk(node.operand))
        raise ValueError(f"not arithmetic: {ast.dump(node)[:40]}")

    if len(expression) > 200:
        raise ValueError("expression too long")
    try:
        return walk(ast.parse(expression.strip(), mode="eval"))
    except (SyntaxError, ZeroDivisionError, OverflowError) as exc:
        raise ValueError(str(exc)) from None


class CalculatorEnv:
    """A tool-use env: the model may write ``<calc>expression</calc>`` and gets ``<result>value</result>`` back
    before its next turn; the episode ends when it answers (``<answer>...</answer>``), writes a turn without a tool
    call, or runs out of turns. Score it with :func:`pgkit.llm.rewards.exact_number` on an ``answer`` column."""

    stop_strings: ClassVar[list[str]] = ["</calc>"]
    INSTRUCTIONS = ("You may use a calculator: write <calc>expression</calc> and wait for <result>. "
                    "Give the final answer as <answer>number</answer>.")

    def __init__(self) -> None:
        self.done = False
        self.calls = 0

    def reset(self, record: dict[str, Any]) -> Any:
        self.done, self.calls = False, 0
        prompt = record["prompt"]
        if isinstance(prompt, str):
            return f"{prompt}\n{self.INSTRUCTIONS}\n"
        return [*prompt[:-1], {**prompt[-1], "content": f"{prompt[-1]['content']}\n{self.INSTRUCTIONS}"}]

    def step(self, completion: str) -> str | None:
        call = re.search(r"<calc>(.*?)</calc>", completion, re.DOTALL)
        if "<answer>" in completion or call is None:
            self.done = True
            return None
        self.calls += 1
        try:
            value = evaluate_arithmetic(call.group(1))
            text = f"{value:g}"
        except ValueError:
            text = "error"
        return f"<result>{text}</result>\n"

    def is_terminal(self) -> bool:
        return self.done


BUILTIN_ENVS = {"single_turn": SingleTurnEnv, "calculator": CalculatorEnv}


def env_factory(env_id: str, kwargs: dict[str, Any]):
    """A function making a fresh env of ``env_id`` (built-in name or ``module:Class``)."""
    if env_id in BUILTIN_ENVS:
        cls = BUILTIN_ENVS[env_id]
    else:
        module_name, sep, attr = env_id.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr) if sep else None
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"config error: env.id: cannot load {env_id!r}: {exc}") from None
        if cls is None:
            raise ConfigError(f"config error: env.id: unknown text env {env_id!r}; built-in: "
                              f"{', '.join(BUILTIN_ENVS)}, or a module:Class")
    for method in ("reset", "step", "is_terminal"):
        if not callable(getattr(cls, method, None)):
            raise ConfigError(f"config error: env.id: {env_id!r} has no {method}() method")

    def make():
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"config error: env.kwargs: {exc} (got {kwargs})") from None

    return make


__all__ = ["CalculatorEnv", "SingleTurnEnv", "env_factory", "evaluate_arithmetic"]

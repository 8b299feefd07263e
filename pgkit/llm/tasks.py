"""Prompt records: from a JSONL file, or generated in code (no dataset downloads).

A record is a dict with a ``prompt`` (text, or a list of chat messages ``{"role", "content"}``) and any other
columns; the columns reach the reward functions as keyword arguments (TRL's convention). The last
``prompts.eval_prompts`` records are held out for evaluation.
"""

from __future__ import annotations

import importlib
import json
import random
import string
from pathlib import Path
from typing import Any

from pgkit.errors import ConfigError


def arithmetic(count: int = 4000, digits: int = 2, operations: str = "+-", seed: int = 0) -> list[dict[str, Any]]:
    """Problems ``a op b`` with operands of up to ``digits`` digits; column ``answer`` (an int).

    The prompt asks for the number only; :func:`pgkit.llm.rewards.exact_number` scores it.
    """
    rng = random.Random(seed)
    high = 10**digits - 1
    records = []
    for _ in range(count):
        a, b, op = rng.randint(0, high), rng.randint(0, high), rng.choice(operations)
        answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        records.append({"prompt": f"What is {a} {op} {b}? Answer with the number only.", "answer": answer})
    return records


def repeat_character(count: int = 512, character: str = "a", length: int = 6, seed: int = 0) -> list[dict[str, Any]]:
    """Short random lowercase prompts; column ``character``. A toy task for ``builtin:tiny``: rewarding the share of
    ``character`` in the completion (:func:`pgkit.llm.rewards.character_fraction`) teaches a random-init model to
    emit it."""
    rng = random.Random(seed)
    return [{"prompt": "".join(rng.choice(string.ascii_lowercase) for _ in range(length)), "character": character}
            for _ in range(count)]


BUILTIN_TASKS = {"arithmetic": arithmetic, "repeat_character": repeat_character}


def _check(records: Any, source: str) -> list[dict[str, Any]]:
    if not isinstance(records, list) or not records:
        raise ConfigError(f"config error: prompts: {source} gave no records")
    for i, record in enumerate(records):
        if not isinstance(record, dict) or "prompt" not in record:
            raise ConfigError(f"config error: prompts: {source} record {i + 1} has no 'prompt' (got {record!r:.80})")
        prompt = record["prompt"]
        chat = isinstance(prompt, list) and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in prompt)
        if not (isinstance(prompt, str) or chat):
            raise ConfigError(f"config error: prompts: {source} record {i + 1}: 'prompt' must be text or a list of "
                              f"{{role, content}} messages (got {prompt!r:.80})")
    return records


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a line that is not UTF-8, does not parse or nests too deeply is bad input naming
    its line."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config error: prompts.file: cannot read {str(path)!r} ({exc.__class__.__name__})") from None
    records = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config error: prompts.file: {p.name} line {number} is not UTF-8 text (byte "
                              f"{exc.start + 1}: {raw[exc.start:exc.start + 1]!r})") from None
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config error: prompts.file: {p.name} line {number} is not JSON: {exc.msg} "
                              f"(got {line!r:.80})") from None
        except RecursionError:
            raise ConfigError(f"config error: prompts.file: {p.name} line {number} nests too deeply") from None
    return _check(records, f"{p.name}")


def load_records(file: str | None, task: str | None, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """Every record of the configured source."""
    if file is not None:
        return read_jsonl(file)
    assert task is not None
    if task in BUILTIN_TASKS:
        make = BUILTIN_TASKS[task]
    else:
        module_name, _, attr = task.partition(":")
        try:
            make = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            names = ", ".join(BUILTIN_TASKS)
            raise ConfigError(f"config error: prompts.task: cannot load {task!r} ({exc}); built-in tasks: {names}, or "
                              "a module:function") from None
    try:
        records = make(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"config error: prompts.task_kwargs: {exc} (got {kwargs})") from None
    return _check(records, f"task {task!r}")


def split(records: list[dict[str, Any]], eval_count: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train, eval)``: the last ``eval_count`` records are held out."""
    if eval_count >= len(records):
        raise ConfigError(f"config error: prompts.eval_prompts: holds out all {len(records)} records, leaving none to "
                          f"train on (got {eval_count})")
    return records[: len(records) - eval_count], records[len(records) - eval_count :]


__all__ = ["arithmetic", "load_records", "read_jsonl", "repeat_character", "split"]

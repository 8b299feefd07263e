"""Checks of a language-model config that need more than pydantic: the model, prompts, env and reward functions
exist and fit together. Each failure is bad input, one line naming the field (exit 2), before anything trains."""

from __future__ import annotations

import importlib.util
from typing import Any

from pgkit.errors import ConfigError


def check_language_config(cfg: Any) -> None:
    """Raise :class:`ConfigError` for a model that is not there, prompts that do not parse, a reward function that
    does not import or answers with the wrong length or non-numbers, or a prompt too long for the model."""
    if importlib.util.find_spec("transformers") is None:
        raise ConfigError('config error: model: language models need the llm extra: pip install -e ".[llm]" '
                          "-c constraints.txt")
    from pgkit.llm.envs import env_factory
    from pgkit.llm.model import context_length, load_tokenizer
    from pgkit.llm.rewards import RewardFunctions
    from pgkit.llm.rollout import TextRollout, columns_of
    from pgkit.llm.tasks import load_records, split

    records = load_records(cfg.prompts.file, cfg.prompts.task, cfg.prompts.task_kwargs)
    split(records, cfg.prompts.eval_prompts)
    make_env = env_factory(cfg.env.id, cfg.env.kwargs)
    rewards = RewardFunctions(cfg.reward.functions, cfg.reward.timeout_s)
    probe = records[:2]
    prompts = [r["prompt"] for r in probe]
    completions = ["" if isinstance(p, str) else [{"role": "assistant", "content": ""}] for p in prompts]
    rewards(prompts, completions, columns_of(probe), 0, 0.0, check=True)
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.gguf_file)
    context = context_length(cfg.model.path, cfg.model.gguf_file)
    rollout = TextRollout(tokenizer, make_env, cfg.env.max_turns, cfg.generation.max_new_tokens,
                          cfg.generation.top_p, cfg.prompts.chat_template, cfg.prompts.system_prompt)
    budget = cfg.generation.max_new_tokens * cfg.env.max_turns
    for number, record in enumerate(records, start=1):
        length = len(rollout.prompt_ids(make_env().reset(record)))
        if length + budget > context:
            raise ConfigError(
                f"config error: prompts: record {number} has {length} tokens, and with generation.max_new_tokens x "
                f"env.max_turns = {budget} more it exceeds the model's context of {context} tokens"
            )


__all__ = ["check_language_config"]

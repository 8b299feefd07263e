"""Text rollouts: batched sampling with the KV cache, turn by turn, into the ``[B, T]`` layout the losses take.

Every episode is a list of token ids with a parallel 0/1 mask: the prompt (0), each turn the model generated (1,
through its end-of-sequence token when it emitted one), and each observation the env appended (0). Prompts are
padded on the left (a decoder-only model continues at the right end), each turn is sampled for every unfinished
episode at once with ``model.generate`` (which keeps the KV cache over the turn's tokens), and a turn ends at the
end-of-sequence token, at one of the env's stop strings, or after ``max_new_tokens``. Tokens are never re-tokenized
from text, so the sampled ids are exactly the ones trained on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class Episodes:
    """Finished episodes, padded on the left into one batch."""

    input_ids: Tensor
    """``[B, L]`` token ids."""
    attention_mask: Tensor
    """``[B, L]``: 0 on the left padding."""
    keep: int
    """The scored positions are the last ``keep`` tokens of every row (from the earliest generated token)."""
    mask: Tensor
    """``[B, keep]`` float: 1 on tokens the policy generated."""
    prompts: list[Any]
    completions: list[Any]
    """The text after each prompt (observations included), or TRL's chat messages for chat prompts."""
    records: list[dict[str, Any]]
    seconds: float = 0.0
    """Wall-clock of the sampling."""
    extra: dict[str, Tensor] = field(default_factory=dict)

    @property
    def generated_tokens(self) -> int:
        """Tokens the policy sampled."""
        return int(self.mask.sum())

    @property
    def lengths(self) -> Tensor:
        """Tokens generated per episode, ``[B]``."""
        return self.mask.sum(-1)

    def last_generated(self) -> Tensor:
        """Index (within the ``keep`` positions) of each episode's last generated token, ``[B]``."""
        positions = torch.arange(self.keep, device=self.mask.device).expand_as(self.mask)
        return torch.where(self.mask.bool(), positions, -1).amax(-1)


class TextRollout:
    """Turns prompt records into :class:`Episodes` with a model (see the module docstring)."""

    def __init__(self, tokenizer, make_env: Callable[[], Any], max_turns: int, max_new_tokens: int, top_p: float,
                 chat_template: str = "auto", system_prompt: str | None = None) -> None:
        self.tokenizer, self.make_env, self.max_turns = tokenizer, make_env, max_turns
        self.max_new_tokens, self.top_p = max_new_tokens, top_p
        has_template = getattr(tokenizer, "chat_template", None) is not None
        self.use_template = chat_template == "always" or (chat_template == "auto" and has_template)
        self.system_prompt = system_prompt
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos

    def prompt_ids(self, prompt: Any) -> list[int]:
        """Token ids of a prompt: through the chat template (with the generation prompt) when used, else as text."""
        if self.use_template:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            if self.system_prompt and messages[0].get("role") != "system":
                messages = [{"role": "system", "content": self.system_prompt}, *messages]
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def _pad(self, rows: list[list[int]], device) -> tuple[Tensor, Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        attention = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            attention[i, width - len(row) :] = 1
        return ids.to(device), attention.to(device)

    def _turn_end(self, new: list[int], stop_strings: list[str]) -> int:
        """How many of a turn's sampled tokens belong to it: through the first end-of-sequence token, or through
        the first stop string (the tokens ``generate`` emits after a row has stopped are padding)."""
        end = new.index(self.eos) + 1 if self.eos in new else len(new)
        if stop_strings:
            text = self.tokenizer.decode(new[:end])
            if any(s in text for s in stop_strings):
                for j in range(1, end + 1):
                    if any(s in self.tokenizer.decode(new[:j]) for s in stop_strings):
                        return j
        return end

    @torch.no_grad()
    def collect(self, model: nn.Module, records: list[dict[str, Any]], temperature: float) -> Episodes:
        """Run one episode per record; ``temperature`` 0 decodes greedily."""
        from transformers import GenerationConfig

        start = time.perf_counter()
        device = next(model.parameters()).device
        envs = [self.make_env() for _ in records]
        prompts = [env.reset(record) for env, record in zip(envs, records, strict=True)]
        tokens = [self.prompt_ids(p) for p in prompts]
        masks = [[0] * len(t) for t in tokens]
        prompt_lengths = [len(t) for t in tokens]
        stop_strings = list(getattr(envs[0], "stop_strings", []) or [])
        sample = temperature > 0
        config = GenerationConfig(
            do_sample=sample, temperature=temperature if sample else None, top_p=self.top_p if sample else None,
            top_k=0 if sample else None, max_new_tokens=self.max_new_tokens, pad_token_id=self.pad,
            eos_token_id=self.eos, stop_strings=stop_strings or None,
        )
        active = list(range(len(records)))
        was_training = model.training
        model.eval()
        for turn in range(self.max_turns):
            if not active:
                break
            ids, attention = self._pad([tokens[i] for i in active], device)
            out = model.generate(input_ids=ids, attention_mask=attention, generation_config=config,
                                 tokenizer=self.tokenizer if stop_strings else None)
            still = []
            for row, i in enumerate(active):
                new = out[row, ids.shape[1] :].tolist()
                new = new[: self._turn_end(new, stop_strings)]
                tokens[i] += new
                masks[i] += [1] * len(new)
                observation = envs[i].step(self.tokenizer.decode(new, skip_special_tokens=True))
                if observation is not None and not envs[i].is_terminal() and turn + 1 < self.max_turns:
                    obs_ids = self.tokenizer(observation, add_special_tokens=False)["input_ids"]
                    tokens[i] += obs_ids
                    masks[i] += [0] * len(obs_ids)
                    still.append(i)
            active = still
        model.train(was_training)
        ids, attention = self._pad(tokens, device)
        width = ids.shape[1]
        keep = max(len(t) - p for t, p in zip(tokens, prompt_lengths, strict=True))
        keep = max(keep, 1)
        mask = torch.zeros(len(tokens), width, device=device)
        for i, m in enumerate(masks):
            mask[i, width - len(m) :] = torch.tensor(m, dtype=torch.float32, device=device)
        texts = [self.tokenizer.decode(t[p:], skip_special_tokens=True)
                 for t, p in zip(tokens, prompt_lengths, strict=True)]
        completions = [text if isinstance(p, str) else [{"role": "assistant", "content": text}]
                       for text, p in zip(texts, prompts, strict=True)]
        return Episodes(ids, attention, keep, mask[:, width - keep :], prompts, completions, list(records),
                        time.perf_counter() - start)


def columns_of(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The records' columns other than ``prompt``, as lists (what reward functions receive as keyword arguments)."""
    keys = [k for k in records[0] if k != "prompt"]
    return {k: [r.get(k) for r in records] for k in keys}


__all__ = ["Episodes", "TextRollout", "columns_of"]

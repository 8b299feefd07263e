"""Causal language models as policies: loading (a local Hugging Face directory, a GGUF file, a GGUF shipped in an
installed package, or ``builtin:tiny``), an optional LoRA, and the per-token log-probabilities the losses need.

``builtin:tiny`` is a small random-init Llama with a character-level tokenizer, both built in code, so tests and the
quick start need no download. Everything else is read from disk only: no model hub is contacted
(``local_files_only``).
"""

from __future__ import annotations

import copy
import importlib.util
import string
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pgkit.errors import ConfigError

BUILTIN_TINY = "builtin:tiny"
PACKAGE_PREFIX = "package:"

#: ``builtin:tiny``: 2 layers of width 64 over a character vocabulary; about 100k parameters.
TINY_SIZES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 4, "max_position_embeddings": 256}


def tiny_tokenizer():
    """A character-level tokenizer: printable ASCII plus ``<pad>``, ``<bos>`` and ``<eos>``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {token: i for i, token in enumerate([*specials, *string.printable])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", padding_side="left")


def resolve_model_path(path: str, gguf_file: str | None) -> tuple[Path, str | None]:
    """``(directory, gguf file name or None)`` for a model path; raises :class:`ConfigError` when it names nothing."""
    if path.startswith(PACKAGE_PREFIX):
        package = path.removeprefix(PACKAGE_PREFIX)
        spec = importlib.util.find_spec(package)  # locates the package without importing it
        if spec is None or not spec.origin:
            raise ConfigError(f"config error: model.path: package {package!r} is not installed (got {path!r})")
        folder = Path(spec.origin).parent
        files = sorted(p.name for p in folder.glob("*.gguf"))
        if len(files) != 1:
            raise ConfigError(f"config error: model.path: package {package!r} holds {len(files)} .gguf files, "
                              f"not one; give the file's path instead (got {path!r})")
        return folder, files[0]
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"config error: model.path: {path!r} does not exist (a local Hugging Face directory, a "
                          f".gguf file, {BUILTIN_TINY} or {PACKAGE_PREFIX}<name>)")
    if p.is_file():
        if p.suffix != ".gguf":
            raise ConfigError(f"config error: model.path: a file must be a .gguf model (got {path!r})")
        return p.parent, p.name
    if gguf_file is None and not (p / "config.json").exists():
        ggufs = sorted(f.name for f in p.glob("*.gguf"))
        if len(ggufs) == 1:
            return p, ggufs[0]
        raise ConfigError(f"config error: model.path: {path!r} has no config.json (not a Hugging Face model "
                          "directory) and no single .gguf file")
    return p, gguf_file


def load_tokenizer(path: str, gguf_file: str | None = None):
    """The tokenizer of a model path, left-padded (decoder-only batches are padded on the left to generate)."""
    if path == BUILTIN_TINY:
        return tiny_tokenizer()
    from transformers import AutoTokenizer

    folder, gguf = resolve_model_path(path, gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def context_length(path: str, gguf_file: str | None = None) -> int:
    """The model's maximum sequence length, from its config alone (no weights)."""
    if path == BUILTIN_TINY:
        return TINY_SIZES["max_position_embeddings"]
    from transformers import AutoConfig

    folder, gguf = resolve_model_path(path, gguf_file)
    config = AutoConfig.from_pretrained(folder, gguf_file=gguf, local_files_only=True)
    return int(getattr(config, "max_position_embeddings", 2048))


def load_model(path: str, gguf_file: str | None, dtype: torch.dtype, tokenizer, seed: int) -> nn.Module:
    """The causal LM of a model path; ``builtin:tiny`` is initialised from ``seed``."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if path == BUILTIN_TINY:
        config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             tie_word_embeddings=True, **TINY_SIZES)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return LlamaForCausalLM(config).to(dtype)
    folder, gguf = resolve_model_path(path, gguf_file)
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=dtype, local_files_only=True)


def add_lora(model: nn.Module, r: int, alpha: int, dropout: float, target_modules: list[str] | str) -> nn.Module:
    """Wrap ``model`` with a peft LoRA: only the adapters train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that never trains (a reference policy)."""
    return copy.deepcopy(model).requires_grad_(False).eval()


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only, as ``generate`` counts them for left-padded batches. Passed
    explicitly, so the log-probs of a padded row never depend on how a model class derives positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_log_probs(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, keep: int, temperature: float = 1.0,
    with_entropy: bool = False, with_hidden: bool = False, forward=None,
) -> dict[str, Tensor]:
    """Log-probabilities of the last ``keep`` tokens of each row under ``model``, ``[B, keep]``.

    Logits are divided by ``temperature``, as TRL does, so the log-probs are those of the distribution the tokens
    were sampled from (top-p truncation aside). With ``with_entropy`` also the entropy of each of those
    distributions; with ``with_hidden`` the last hidden state at the positions that predict them (for a value head).
    ``forward`` replaces ``model``'s own call (a compiled forward).
    """
    outputs = (forward or model)(input_ids=input_ids, attention_mask=attention_mask,
                                 position_ids=position_ids(attention_mask), logits_to_keep=keep + 1,
                                 output_hidden_states=with_hidden, use_cache=False)
    logits = outputs.logits[:, :-1].float() / temperature  # position t predicts token t + 1
    log_p = torch.log_softmax(logits, dim=-1)
    targets = input_ids[:, -keep:]
    out = {"log_prob": log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)}
    if with_entropy:
        out["entropy"] = -(log_p.exp() * log_p).sum(-1)
    if with_hidden:
        out["hidden"] = outputs.hidden_states[-1][:, -keep - 1 : -1]
    return out


class ValueHead(nn.Module):
    """A linear value estimate from the LM's last hidden state at each position (TRL's value head)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.linear(hidden.float()).squeeze(-1)


def hidden_size(model: nn.Module) -> int:
    """Width of the model's hidden states."""
    config: Any = model.config
    return int(config.hidden_size)


__all__ = [
    "BUILTIN_TINY",
    "ValueHead",
    "add_lora",
    "context_length",
    "frozen_copy",
    "load_model",
    "load_tokenizer",
    "position_ids",
    "resolve_model_path",
    "tiny_tokenizer",
    "token_log_probs",
]

"""Reading and writing pgkit checkpoints safely.

Checkpoints are read with ``torch.load(weights_only=True)``: only tensors and plain containers are unpickled, so a
``.ckpt`` cannot run code by being read. Everything pgkit itself writes into them is data:

- ``hyper_parameters["config"]``: the resolved config, a plain dict;
- ``pgkit``: the format version, the MLflow run id, the observation and action spaces as data
  (:mod:`pgkit.environments.spaces`), the config's signature under this user's key (:mod:`pgkit.trust`), the base
  model of a LoRA run, and each rank's env state for an exact resume (a signed pickle inside a ``uint8`` tensor,
  unpickled only when its signature verifies: :mod:`pgkit.resume_state`).

Reading also checks every number pgkit will use: a crafted file with a negative step counter, NaN statistics or
weights, or spaces that do not parse is bad input (one line, exit 2), not a traceback deep inside Lightning.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pgkit.errors import UserError
from pgkit.trust import config_is_own, sign_config

#: Version of the ``checkpoint["pgkit"]`` section: 2 adds the spaces, the config's signature and the env state.
FORMAT_VERSION = 2
#: Largest iteration or step counter a checkpoint may hold.
_MAX_COUNT = 2**53


@dataclass(frozen=True)
class LoadedCheckpoint:
    """The parts of a Lightning checkpoint that pgkit needs outside Lightning."""

    path: Path
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    mlflow_run_id: str | None
    env_steps: int
    own: bool = False
    """Whether this user's pgkit wrote it (its config's signature verifies under this user's key)."""
    spaces: tuple[Any, Any] | None = None
    """The observation and action spaces (gymnasium runs written by pgkit 0.1 format 2 and later)."""
    env_states: dict[str, torch.Tensor] = field(default_factory=dict)
    """Each rank's packed env state (:func:`pgkit.resume_state.unpack_env_state`), by rank as text."""
    partial: bool = False
    """Whether ``state_dict`` holds only the trained part of the module (a LoRA run: the adapters, not the base)."""


def _bad(path: str | Path, problem: str) -> UserError:
    return UserError(f"checkpoint error: {path}: {problem}")


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Load and check a pgkit checkpoint, raising :class:`UserError` for missing, truncated, foreign or crafted
    files."""
    p = Path(path)
    if not p.exists():
        raise _bad(path, "file not found")
    if p.is_dir():
        raise _bad(path, "is a directory, not a checkpoint file")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError, KeyError,
            IndexError, TypeError, AttributeError, UnicodeDecodeError, RecursionError,
            MemoryError) as exc:  # a text file gives KeyError: 101
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        first = first if not isinstance(exc, KeyError) else f"unexpected byte {first}"
        raise _bad(path, f"not a readable checkpoint (truncated or corrupt?): {first[:200]}") from None
    meta = ckpt.get("pgkit") if isinstance(ckpt, dict) else None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    config = hparams.get("config") if isinstance(hparams, dict) else None
    if not isinstance(meta, dict) or not isinstance(config, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise _bad(path, "not a pgkit checkpoint (no pgkit config or state)")
    state = ckpt["state_dict"]
    _check_numbers(path, ckpt, state)
    from pgkit.config_loading import check_size
    from pgkit.errors import ConfigError

    try:
        check_size(config, "hyper_parameters.config")
    except ConfigError as exc:
        raise _bad(path, str(exc).removeprefix("config error: ")) from None
    run_id = meta.get("mlflow_run_id")
    if run_id is not None and not (isinstance(run_id, str) and run_id.isalnum() and len(run_id) <= 64):
        raise _bad(path, f"pgkit.mlflow_run_id is not an MLflow run id (got {run_id!r:.60})")
    spaces = None
    if meta.get("spaces") is not None:
        from pgkit.environments.spaces import space_from_data

        data = meta["spaces"]
        try:
            if not isinstance(data, dict):
                raise ValueError("pgkit.spaces: expected a mapping")
            spaces = (space_from_data(data.get("observation"), "pgkit.spaces.observation"),
                      space_from_data(data.get("action"), "pgkit.spaces.action"))
        except (ValueError, TypeError, OverflowError) as exc:
            raise _bad(path, f"{exc}") from None
    env_states = meta.get("env_state") or {}
    if not (isinstance(env_states, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in env_states.items())):
        raise _bad(path, "pgkit.env_state is not a mapping of ranks to tensors")
    return LoadedCheckpoint(
        path=p,
        config=config,
        state_dict=state,
        mlflow_run_id=run_id,
        env_steps=int(state.get("env_steps", 0)),
        own=config_is_own(config, meta.get("config_signature")),
        spaces=spaces,
        env_states=env_states,
        partial=bool(meta.get("partial_state", False)),
    )


def _check_numbers(path: str | Path, ckpt: dict[str, Any], state: dict[str, Any]) -> None:
    """Raise :class:`UserError` for counters that are not small non-negative integers, and for weights or
    statistics that are not finite (a crafted file; pgkit never saves such a state)."""
    for key in ("epoch", "global_step"):
        value = ckpt.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
            raise _bad(path, f"{key} must be a non-negative integer (got {value!r:.40})")
    for key, tensor in state.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise _bad(path, f"state_dict entry {key!r:.60} is not a tensor")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise _bad(path, f"state_dict[{key!r}] holds NaN or infinite values")
    steps = state.get("env_steps")
    if steps is not None and (steps.numel() != 1 or steps.is_floating_point() or steps.is_complex()
                              or not 0 <= int(steps) <= _MAX_COUNT):
        raise _bad(path, "state_dict['env_steps'] must be one non-negative integer")
    for key, tensor in state.items():
        statistic = (".rms." in f".{key}" or "return_rms" in key) and key.rsplit(".", 1)[-1] in ("var", "count")
        if statistic and tensor.is_floating_point() and bool((tensor < 0).any()):
            raise _bad(path, f"state_dict[{key!r}] holds negative values (a variance or a count)")


def checkpoint_metadata(mlflow_run_id: str | None, config: dict[str, Any], spaces: tuple[Any, Any] | None = None,
                        env_states: dict[str, torch.Tensor] | None = None,
                        base_model: str | None = None) -> dict[str, Any]:
    """The ``checkpoint["pgkit"]`` section written with every checkpoint: the config is signed with this user's key,
    so a later ``pgkit eval`` or ``--resume`` knows the file as this user's own (:mod:`pgkit.trust`)."""
    meta: dict[str, Any] = {"format": FORMAT_VERSION, "mlflow_run_id": mlflow_run_id,
                            "config_signature": sign_config(config)}
    if spaces is not None:
        from pgkit.environments.spaces import space_to_data

        meta["spaces"] = {"observation": space_to_data(spaces[0]), "action": space_to_data(spaces[1])}
    if env_states:
        meta["env_state"] = env_states
    if base_model is not None:
        meta["partial_state"] = True
        meta["base_model"] = base_model
    return meta


def check_resume_fits(loaded: LoadedCheckpoint, config: dict[str, Any]) -> None:
    """Raise :class:`UserError` if a checkpoint cannot continue under ``config``: another algorithm (its optimizer
    state would not fit), another environment or another model. The weights' shapes are checked when they are loaded
    (:func:`load_weights`); both checks run before any MLflow run is opened."""
    def get(data: dict[str, Any], *keys: str) -> Any:
        for key in keys:
            data = data.get(key) if isinstance(data, dict) else None
        return data

    for keys in (("algorithm", "name"), ("env", "id"), ("model", "path")):
        saved, wanted = get(loaded.config, *keys), get(config, *keys)
        if keys[0] == "model" and isinstance(saved, str) and isinstance(wanted, str):
            # A local model directory given relative once and absolute once, or through a link, is the same model.
            saved, wanted = (str(Path(p).resolve()) if Path(p).exists() else p for p in (saved, wanted))
        if saved != wanted:
            raise UserError(
                f"checkpoint error: {loaded.path}: was trained with {'.'.join(keys)} {saved!r}, but this config has "
                f"{wanted!r}; resume with the run's own config (pgkit fit --resume CKPT) or start a new run"
            )


def load_weights(module: torch.nn.Module, loaded: LoadedCheckpoint) -> None:
    """Load a checkpoint's weights into a module built from a config, as bad input (:class:`UserError`) if the
    shapes or keys don't fit (a changed ``env.num_envs``, env or policy, or a foreign file). A partial state (a LoRA
    run's adapters) must fit the module's trained part exactly; the frozen rest comes from the base model."""
    try:
        if loaded.partial:
            expected = set(trained_state_keys(module))
            missing, unexpected = expected - set(loaded.state_dict), set(loaded.state_dict) - set(module.state_dict())
            if missing or unexpected:
                raise RuntimeError(f"missing keys {sorted(missing)[:3]}, unexpected keys {sorted(unexpected)[:3]}")
            module.load_state_dict(loaded.state_dict, strict=False)
        else:
            module.load_state_dict(loaded.state_dict)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise UserError(
            f"checkpoint error: {loaded.path}: does not fit this config (did env.num_envs, the env or the policy "
            f"change?): {detail}"
        ) from None


def trained_state_keys(module: torch.nn.Module) -> list[str]:
    """The state-dict keys a partial checkpoint keeps: every parameter that trains, every buffer, and every tensor
    outside the frozen base model (``frozen_prefixes`` of the module: a LoRA run's base weights, in the policy and
    in its reference copy)."""
    prefixes = tuple(getattr(module, "frozen_prefixes", ()))
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    keys = []
    for name in module.state_dict():
        if name in trainable or "lora_" in name or not name.startswith(prefixes):
            keys.append(name)
    return keys


__all__ = ["LoadedCheckpoint", "check_resume_fits", "checkpoint_metadata", "load_checkpoint", "load_weights",
           "trained_state_keys"]

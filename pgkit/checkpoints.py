"""Reading pgkit checkpoints safely.

Checkpoints are read with ``torch.load(weights_only=True)``: only tensors and plain containers are unpickled, so a
malicious ``.ckpt`` cannot run code. pgkit writes nothing else into its checkpoints (the config is stored as a plain
dict), so no opt-in to full unpickling is ever needed for them.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pgkit.errors import UserError

#: Version of the ``checkpoint["pgkit"]`` section.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LoadedCheckpoint:
    """The parts of a Lightning checkpoint that pgkit needs outside Lightning."""

    path: Path
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    mlflow_run_id: str | None
    env_steps: int


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Load and check a pgkit checkpoint, raising :class:`UserError` for missing, truncated or foreign files."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"checkpoint error: {path}: file not found")
    if p.is_dir():
        raise UserError(f"checkpoint error: {path}: is a directory, not a checkpoint file")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError, KeyError,
            IndexError, TypeError, AttributeError, UnicodeDecodeError) as exc:  # a text file gives KeyError: 101
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        first = first if not isinstance(exc, KeyError) else f"unexpected byte {first}"
        raise UserError(
            f"checkpoint error: {path}: not a readable checkpoint (truncated or corrupt?): {first}"
        ) from None
    meta = ckpt.get("pgkit") if isinstance(ckpt, dict) else None
    config = ckpt.get("hyper_parameters", {}).get("config") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or not isinstance(config, dict) or "state_dict" not in ckpt:
        raise UserError(f"checkpoint error: {path}: not a pgkit checkpoint (no pgkit config or state)")
    state = ckpt["state_dict"]
    return LoadedCheckpoint(
        path=p,
        config=config,
        state_dict=state,
        mlflow_run_id=meta.get("mlflow_run_id"),
        env_steps=int(state.get("env_steps", 0)),
    )


def checkpoint_metadata(mlflow_run_id: str | None) -> dict[str, Any]:
    """The ``checkpoint["pgkit"]`` section written with every checkpoint."""
    return {"format": FORMAT_VERSION, "mlflow_run_id": mlflow_run_id}


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
    shapes or keys don't fit (a changed ``env.num_envs``, env or policy, or a foreign file)."""
    try:
        module.load_state_dict(loaded.state_dict)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise UserError(
            f"checkpoint error: {loaded.path}: does not fit this config (did env.num_envs, the env or the policy "
            f"change?): {detail}"
        ) from None

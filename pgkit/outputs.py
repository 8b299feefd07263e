"""Where a run writes, decided before anything trains: a new run never writes over an earlier run's files.

- A run whose output folder is the default (``runs/<name>-<env>-s<seed>``) and already holds an earlier run's
  checkpoints takes the next free versioned folder, ``...-v2``, ``...-v3``, as Lightning's ``version_N`` does.
- A run given ``trainer.output_dir`` explicitly refuses such a folder (exit 2) and says how to continue it
  (``--resume``) or where else to write: a path the user chose is never silently changed.
- A resumed run writes into the folder its checkpoint came from, unless ``trainer.output_dir`` says otherwise; a
  checkpoint from elsewhere is resumed into a folder by the same rules as a new run.
- The folder must be writable; that is checked by writing into it, so a read-only or impossible folder fails in
  seconds, not at the first checkpoint.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from pgkit.errors import ConfigError


def holds_checkpoints(output_dir: Path) -> bool:
    """Whether ``output_dir`` holds an earlier run's checkpoints."""
    folder = output_dir / "checkpoints"
    return folder.is_dir() and any(folder.glob("*.ckpt"))


def check_writable(output_dir: Path) -> None:
    """Create ``output_dir/checkpoints`` and write a file there, or raise :class:`ConfigError` with one line. (The
    folders stay: other processes of the run, or other runs sharing a parent, may be creating them too.)"""
    folder = output_dir / "checkpoints"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"config error: trainer.output_dir: cannot write checkpoints into {str(output_dir)!r}: "
            f"{exc.strerror or exc} (got {str(output_dir)!r})"
        ) from None


def resolve_output_dir(cfg: Any, resume: str | Path | None = None, rank_zero: bool = True) -> Any:
    """``cfg`` with the output folder this run may write to (a copy when a versioned folder is taken).

    Raises :class:`ConfigError` for an explicit folder that holds an earlier run's checkpoints (unless the run
    resumes from one of them), or one that cannot be written. Only global rank 0 (``rank_zero``) writes the probe
    file; every rank takes the same decision because all of them look before any of them has written a checkpoint.
    """
    trainer = cfg.trainer
    output_dir = Path(trainer.output_dir)
    explicit = "output_dir" in trainer.model_fields_set
    own_folder = resume is not None and Path(resume).parent.name == "checkpoints"
    if own_folder and not explicit:
        # A resumed run continues in the folder its checkpoint came from (which may be a versioned one).
        output_dir = Path(resume).parent.parent
        cfg = cfg.model_copy(update={"trainer": trainer.model_copy(update={"output_dir": str(output_dir)})})
    elif holds_checkpoints(output_dir) and not (own_folder and Path(resume).resolve().parent.parent
                                                == output_dir.resolve()):
        # A new run, or a resume from a checkpoint that is not in this folder: never write over another run.
        if explicit:
            raise ConfigError(
                f"config error: trainer.output_dir: {str(output_dir)!r} holds the checkpoints of an earlier run; "
                f"continue it with --resume {output_dir / 'checkpoints' / 'last.ckpt'}, or choose another "
                f"trainer.output_dir (got {str(output_dir)!r})"
            )
        version = 2
        while holds_checkpoints(Path(f"{output_dir}-v{version}")):
            version += 1
        output_dir = Path(f"{output_dir}-v{version}")
        trainer = trainer.model_copy(update={"output_dir": str(output_dir)})
        cfg = cfg.model_copy(update={"trainer": trainer})
    if rank_zero:
        check_writable(output_dir)
    return cfg


__all__ = ["check_writable", "holds_checkpoints", "resolve_output_dir"]

"""Where a run writes, decided and claimed before anything trains: two runs never share a folder, and a new run
never writes over an earlier run's files.

- **A run claims its folder** before it writes anything: it creates the folder and takes an exclusive ``flock`` on
  ``.pgkit-run.lock`` inside it, held until the process ends (the kernel drops it when the process dies, SIGKILL
  included, so a crashed run never leaves a stale claim). Two runs started at the same instant cannot both take a
  folder: the second finds the lock held and takes the next version.
- A run whose output folder is the default (``runs/<name>-<env>-s<seed>``) skips folders that hold an earlier run's
  checkpoints or that a live run holds, and takes the next free versioned folder, ``...-v2``, ``...-v3``, as
  Lightning's ``version_N`` does.
- A run given ``trainer.output_dir`` explicitly refuses (exit 2) a folder that a live run holds, or that holds an
  earlier run's checkpoints (and says how to continue it): a path the user chose is never silently changed.
- A resume from a folder's ``last.ckpt`` continues in that folder (unless ``trainer.output_dir`` says otherwise).
  A resume from any other checkpoint (``best.ckpt``, a copy elsewhere) would write over that folder's newer
  ``last.ckpt``, so it branches into a new folder by the same rules as a new run.
- The folder must be writable; that is checked by writing into it, so a read-only or impossible folder fails in
  seconds, not at the first checkpoint.

Only global rank 0 of a multi-process run claims and writes; the other ranks take its folder (Lightning's launcher
passes it on in ``PGKIT_OUTPUT_DIR``) or work out the same name. The lock is local to a machine (``flock`` on NFS
depends on the server): runs on several machines need folders of their own, as any shared folder does.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any

from pgkit.errors import ConfigError

LOCK_NAME = ".pgkit-run.lock"
#: Environment variable through which rank 0 hands its folder to the processes Lightning starts for the other ranks.
OUTPUT_DIR_VAR = "PGKIT_OUTPUT_DIR"

_CLAIMS: dict[str, int] = {}  # resolved folder -> the file descriptor holding its lock, for this process


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
        raise _unwritable(output_dir, exc) from None


def _unwritable(output_dir: Path, exc: OSError) -> ConfigError:
    return ConfigError(f"config error: trainer.output_dir: cannot write checkpoints into {str(output_dir)!r}: "
                       f"{exc.strerror or exc} (got {str(output_dir)!r})")


def claim(output_dir: Path) -> str | None:
    """Take ``output_dir`` for this process: None when taken (or already ours), else who holds it (``pid N on
    host``). Creates the folder; raises :class:`ConfigError` when it cannot be created."""
    key = str(output_dir.resolve())
    if key in _CLAIMS:
        return None
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(output_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _unwritable(output_dir, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held by a live process
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        return holder
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _CLAIMS[key] = fd
    return None


def release_all() -> None:
    """Give up every folder this process claimed (a run ended; the process may go on, as ``pgkit.fit`` callers do)."""
    while _CLAIMS:
        _, fd = _CLAIMS.popitem()
        with contextlib.suppress(OSError):
            os.close(fd)


def _with_dir(cfg: Any, output_dir: Path) -> Any:
    trainer = cfg.trainer.model_copy(update={"output_dir": str(output_dir)})
    return cfg.model_copy(update={"trainer": trainer})


def resolve_output_dir(cfg: Any, resume: str | Path | None = None, rank_zero: bool = True) -> Any:
    """``cfg`` with the output folder this run writes to, claimed for this process (a copy when another folder
    than the configured one is taken).

    Raises :class:`ConfigError` for a folder that a live run holds when it was given (``trainer.output_dir``) or
    is resumed in, for a given folder that holds an earlier run's checkpoints (unless this run resumes from its
    ``last.ckpt``), and for one that cannot be written.
    """
    trainer = cfg.trainer
    explicit = "output_dir" in trainer.model_fields_set
    if not rank_zero:
        handed = os.environ.get(OUTPUT_DIR_VAR)
        return _with_dir(cfg, Path(handed)) if handed and not explicit else cfg
    output_dir = Path(trainer.output_dir)
    continues = _continued_folder(resume)
    if explicit or continues is not None:
        output_dir = output_dir if explicit else continues
        here = continues is not None and continues.resolve() == output_dir.resolve()
        holder = claim(output_dir)
        if holder is not None:
            raise ConfigError(f"config error: trainer.output_dir: {str(output_dir)!r} is in use by a live run "
                              f"({holder}); wait for it to end, or choose another folder (got {str(output_dir)!r})")
        if holds_checkpoints(output_dir) and not here:
            release_all()
            raise ConfigError(
                f"config error: trainer.output_dir: {str(output_dir)!r} holds the checkpoints of an earlier run; "
                f"continue it with --resume {output_dir / 'checkpoints' / 'last.ckpt'}, or choose another "
                f"trainer.output_dir (got {str(output_dir)!r})"
            )
    else:
        # A new run, or a resume that branches off (best.ckpt, a copy): the first free folder of the series, which
        # for a checkpoint inside a run folder is that folder's.
        source = Path(resume).parent.parent if resume is not None and Path(resume).parent.name == "checkpoints" \
            else output_dir
        base = re.sub(r"-v\d+$", "", str(source)) if resume is not None else str(output_dir)
        candidate, version = Path(base), 1
        while holds_checkpoints(candidate) or claim(candidate) is not None:
            version += 1
            candidate = Path(f"{base}-v{version}")
        output_dir = candidate
    check_writable(output_dir)
    for stale in (output_dir / "checkpoints").glob("*.tmp"):  # a write killed mid-way; the folder is ours now
        with contextlib.suppress(OSError):
            stale.unlink()
    os.environ[OUTPUT_DIR_VAR] = str(output_dir)  # for the processes Lightning starts for the other ranks
    return _with_dir(cfg, output_dir) if str(output_dir) != trainer.output_dir else cfg


def _continued_folder(resume: str | Path | None) -> Path | None:
    """The run folder a resume continues in: that of ``<folder>/checkpoints/last.ckpt``; None for any other
    checkpoint, which would write over a newer ``last.ckpt`` if it continued there."""
    if resume is None:
        return None
    path = Path(resume)
    if path.name == "last.ckpt" and path.parent.name == "checkpoints":
        return path.parent.parent
    return None


def continues_in_place(cfg: Any, resume: str | Path | None) -> bool:
    """Whether a resumed run writes into the folder its checkpoint came from (so it continues the same MLflow run);
    a branch into a new folder starts a new one."""
    folder = _continued_folder(resume)
    return folder is not None and folder.resolve() == Path(cfg.trainer.output_dir).resolve()


__all__ = ["LOCK_NAME", "check_writable", "claim", "continues_in_place", "holds_checkpoints", "release_all",
           "resolve_output_dir"]

"""What an exact resume needs beyond the module's weights, buffers and optimizer: the environments.

Random numbers need no saving: every iteration seeds the global generators (and its minibatch permutations) from
``(trainer.seed, rank, iteration)`` (``OnPolicyModule.seed_iteration``).

- The vector env (sub-env simulator states, their generators, time-limit counters, episode statistics, pending
  autoresets) and the next observation cannot be written as tensors in general, so they go to a sidecar file next
  to the checkpoint, ``<checkpoint>.envs-rank<r>``, as a pickle. A pickle runs code when loaded, so the sidecar is
  signed with HMAC-SHA256 under a key private to this user (``$PGKIT_HOME/secret``, default ``~/.config/pgkit``,
  created with mode 0600). ``--resume`` loads only sidecars whose signature verifies: your own runs resume
  exactly; a sidecar from anyone else is never unpickled (the run resumes with freshly reset envs and says so).

``sync`` and ``split`` vector envs are saved (the split backend fetches its worker's half); ``AsyncVectorEnv``'s
sub-envs live in one process each and are not, so async runs resume with freshly reset envs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import secrets
from pathlib import Path
from typing import Any

_MAGIC = b"PGKIT-ENV-STATE-1\n"


def _key() -> bytes:
    home = Path(os.environ.get("PGKIT_HOME", Path.home() / ".config" / "pgkit"))
    path = home / "secret"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    return path.read_bytes()


def sidecar_path(checkpoint: Path, rank: int) -> Path:
    """Where the env state of ``rank`` goes for ``checkpoint``."""
    return checkpoint.with_name(f"{checkpoint.name}.envs-rank{rank}")


def save_env_state(path: Path, state: dict[str, Any]) -> None:
    """Pickle and sign ``state``; write to a temporary file and rename it over ``path``."""
    payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    tag = hmac.new(_key(), payload, hashlib.sha256).hexdigest().encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(_MAGIC + tag + b"\n" + payload)
    os.replace(tmp, path)


def load_env_state(path: Path) -> tuple[dict[str, Any] | None, str]:
    """``(state, "")`` if ``path`` holds env state signed with this user's key, else ``(None, reason)``. Nothing
    is unpickled unless the signature verifies."""
    if not path.exists():
        return None, f"no env state file {path.name}"
    data = path.read_bytes()
    if not data.startswith(_MAGIC):
        return None, f"{path.name} is not a pgkit env state file"
    tag, _, payload = data[len(_MAGIC) :].partition(b"\n")
    expected = hmac.new(_key(), payload, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(tag, expected):
        return None, f"{path.name} was not written by this user's pgkit (signature mismatch), so it is not loaded"
    return pickle.loads(payload), ""


__all__ = ["load_env_state", "save_env_state", "sidecar_path"]

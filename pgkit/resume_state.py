"""What an exact resume needs beyond the module's weights, buffers and optimizer: the environments.

Random numbers need no saving: every iteration seeds the global generators (and its minibatch permutations) from
``(trainer.seed, rank, iteration)`` (``OnPolicyModule.seed_iteration``).

The vector env (sub-env simulator states, their generators, time-limit counters, episode statistics, pending
autoresets), the next observation and the recurrent state cannot be written as tensors in general, so they are
pickled. The pickle goes *inside* the checkpoint, as a ``uint8`` tensor per rank under ``checkpoint["pgkit"]
["env_state"]``: the checkpoint and its env state are one file, written to a temporary name and renamed, so a crash
at any moment leaves the old pair or the new one, never a mix, and a checkpoint copied elsewhere keeps its env state.

A pickle runs code when loaded, so it is signed with HMAC-SHA256 under this user's key (:mod:`pgkit.trust`).
``--resume`` unpickles only env state whose signature verifies: your own runs resume exactly; anyone else's resume
with freshly reset envs, and say so. A signed state that no longer unpickles (the env's code changed) resumes with
fresh envs too, and says so.

``sync`` and ``split`` vector envs are saved (the split backend fetches its worker's half); ``AsyncVectorEnv``'s
sub-envs live in one process each and are not, so async runs resume with freshly reset envs.
"""

from __future__ import annotations

import pickle
from typing import Any

import torch

from pgkit.trust import sign, verify

_MAGIC = b"PGKIT-ENV-STATE-2\n"


def pack_env_state(state: dict[str, Any]) -> torch.Tensor:
    """``state`` pickled and signed, as a ``uint8`` tensor (what ``torch.load(weights_only=True)`` reads back)."""
    payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    blob = _MAGIC + sign(payload).encode() + b"\n" + payload
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8)


def unpack_env_state(packed: Any) -> tuple[dict[str, Any] | None, str]:
    """``(state, "")`` for env state this user's pgkit signed, else ``(None, reason)``. Nothing is unpickled unless
    the signature verifies."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
        return None, "the checkpoint's env state is not a pgkit env state"
    data = packed.numpy().tobytes()
    if not data.startswith(_MAGIC):
        return None, "the checkpoint's env state is not a pgkit env state"
    signature, _, payload = data[len(_MAGIC) :].partition(b"\n")
    if not verify(payload, signature.decode("ascii", "replace")):
        return None, "its env state was not written by this user's pgkit (signature mismatch), so it is not loaded"
    try:
        state = pickle.loads(payload)
    except Exception as exc:  # the env's code changed since: a class renamed, a module gone
        detail = " ".join(str(exc).split())[:160]
        return None, f"its signed env state could not be unpickled ({exc.__class__.__name__}: {detail})"
    if not isinstance(state, dict):
        return None, "its env state is not a mapping"
    return state, ""


__all__ = ["pack_env_state", "unpack_env_state"]

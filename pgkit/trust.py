"""Files from elsewhere run no code: what a checkpoint may name, and how pgkit knows a file is this user's own.

**The threat.** Checkpoints travel: users share them, download them, copy them between machines. A checkpoint holds
the run's config, and a config can name code: ``env.id: mypkg.envs:Maze`` is imported and called to build the env,
and so are a language model's reward functions (``reward.functions``), a ``module:function`` prompt task and a
``module:Class`` text env. A crafted checkpoint naming ``os:system`` with ``env.kwargs: {command: ...}`` would run a
shell command as whoever evaluates it. The env state saved for exact resume is a pickle, which runs code too.

**The rule.** pgkit imports or calls code named inside a checkpoint only when this user wrote the checkpoint, or
the user asks for it (``--trust-code`` on the command line, ``trust_code=True`` in Python). It knows its own files
by a signature: each checkpoint's config, and each saved env state, carries an HMAC-SHA256 under a key private to
this user (``$PGKIT_HOME/secret``, default ``~/.config/pgkit/secret``, mode 0600). So a user's own checkpoints work
as they always did, and anyone else's are data:

- ``pgkit.load(ckpt).predict``, ``pgkit export`` and the MLflow model need no env at all: the checkpoint carries
  its observation and action spaces as plain data (:mod:`pgkit.environments.spaces`), and nothing it names is
  imported.
- ``pgkit eval`` and ``pgkit fit --resume CKPT`` need the env (and a language model's rewards and prompts). A
  registered gymnasium id and pgkit's built-in tasks, text envs and reward functions name no new code and work from
  any checkpoint; a checkpoint from elsewhere that names other code is refused with one line (exit 2) unless the
  user passes ``--trust-code``, or gives the config (``--config``) themselves.
- The env state of a resume is unpickled only when its signature verifies.

Written by hand because the stack has no notion of a file's author: ``torch.load(weights_only=True)`` stops pickled
code but not a config that names code, and neither Lightning nor MLflow signs what it writes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from pgkit.errors import UserError

#: Length of the key pgkit makes, and the least it accepts.
KEY_BYTES = 32

#: Text envs and prompt tasks that are part of pgkit (they name no code of anyone else's).
BUILTIN_TEXT_ENVS = ("single_turn", "calculator")
BUILTIN_TASKS = ("arithmetic", "repeat_character")
#: Reward functions that ship with pgkit.
BUILTIN_REWARDS = ("pgkit.llm.rewards:exact_number", "pgkit.llm.rewards:character_fraction",
                   "pgkit.llm.rewards:length_penalty")


def key_path() -> Path:
    """Where this user's key is: ``$PGKIT_HOME/secret`` (default ``~/.config/pgkit/secret``)."""
    return Path(os.environ.get("PGKIT_HOME", Path.home() / ".config" / "pgkit")) / "secret"


def user_key() -> bytes:
    """This user's signing key, created on first use.

    Created atomically: the random bytes are written to a private temporary file, which is then hard-linked to the
    key's name (``link`` fails if the name exists), so two processes starting at once both end up with the one
    complete key, never with half of one. A key file that is empty or shorter than :data:`KEY_BYTES` is refused
    (a signature under it proves nothing)."""
    return _cached_key(str(key_path()))


@functools.cache
def _cached_key(path_text: str) -> bytes:
    path = Path(path_text)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".secret-{os.getpid()}-{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(KEY_BYTES))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:  # another process made it first: use theirs
                pass
            except OSError:  # a filesystem without hard links: create the name exclusively, then fill it
                with contextlib.suppress(FileExistsError):
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as f:
                        f.write(tmp.read_bytes())
        finally:
            tmp.unlink(missing_ok=True)
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise UserError(f"pgkit: cannot read the signing key {path}: {exc.strerror or exc}") from None
    if len(key) < KEY_BYTES:
        raise UserError(f"pgkit: the signing key {path} holds {len(key)} bytes, fewer than {KEY_BYTES}; it signs "
                        "nothing. Delete it and pgkit makes a new one (checkpoints signed with the old key then "
                        "need --trust-code to run the code they name)")
    return key


def sign(payload: bytes) -> str:
    """HMAC-SHA256 of ``payload`` under this user's key, as hex."""
    return hmac.new(user_key(), payload, hashlib.sha256).hexdigest()


def verify(payload: bytes, signature: Any) -> bool:
    """Whether ``signature`` is this user's signature of ``payload``."""
    return isinstance(signature, str) and hmac.compare_digest(signature, sign(payload))


def canonical(config: dict[str, Any]) -> bytes:
    """The config's bytes for signing: JSON with sorted keys (floats keep their exact repr)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def sign_config(config: dict[str, Any]) -> str:
    """The signature a checkpoint stores with its config."""
    return sign(canonical(config))


def config_is_own(config: Any, signature: Any) -> bool:
    """Whether this user's pgkit wrote ``config`` (its signature verifies)."""
    if not isinstance(config, dict) or not isinstance(signature, str):
        return False
    try:
        return verify(canonical(config), signature)
    except (TypeError, ValueError):  # not JSON data: not something pgkit wrote
        return False


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def named_code(config: dict[str, Any]) -> list[str]:
    """Every place of ``config`` that names code pgkit would import or call, as ``"field: name"``: env entry points,
    a language model's reward functions, prompt task and text env. Registered gymnasium ids and pgkit's built-ins
    name no code of anyone else's and are not listed."""
    found: list[str] = []
    if "model" in config:  # a language-model run
        env_id = _get(config, "env", "id")
        if isinstance(env_id, str) and env_id not in BUILTIN_TEXT_ENVS:
            found.append(f"env.id: {env_id}")
        task = _get(config, "prompts", "task")
        if isinstance(task, str) and task not in BUILTIN_TASKS:
            found.append(f"prompts.task: {task}")
        for entry in _get(config, "reward", "functions") or []:
            name = entry.get("function") if isinstance(entry, dict) else entry
            if not (isinstance(name, str) and name in BUILTIN_REWARDS):
                found.append(f"reward.functions: {name}")
        return found
    env_id = _get(config, "env", "id")
    if isinstance(env_id, str) and ":" in env_id:
        import gymnasium as gym

        if env_id not in gym.registry:
            found.append(f"env.id: {env_id}")
    elif env_id is not None and not isinstance(env_id, str):
        found.append(f"env.id: {env_id!r}")
    return found


def check_code_allowed(path: Any, config: dict[str, Any], own: bool, trust_code: bool, action: str) -> None:
    """Raise :class:`UserError` (exit 2) when ``config``, from the checkpoint at ``path``, names code and neither
    this user wrote it (``own``) nor the user asked to trust it (``trust_code``)."""
    if own or trust_code:
        return
    names = named_code(config)
    if names:
        raise UserError(
            f"checkpoint error: {path}: was not written by you (its config is not signed with your key, "
            f"{key_path()}), and to {action} it would import and run code it names ({'; '.join(names)[:200]}); "
            "if you trust where it came from, pass --trust-code (Python: trust_code=True), or give the config "
            "yourself with --config"
        )


__all__ = ["check_code_allowed", "config_is_own", "key_path", "named_code", "sign", "sign_config", "user_key",
           "verify"]

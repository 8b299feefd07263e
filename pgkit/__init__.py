"""pgkit: policy-gradient algorithms on PyTorch Lightning, driven by one typed YAML config."""

from collections.abc import Mapping as _Mapping
from collections.abc import Sequence as _Sequence
from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version
from pathlib import Path as _Path
from typing import Any as _Any

from pgkit import startup as _startup

_startup.hold()  # before the slow imports: a Ctrl-C while the `pgkit` command starts ends it with 130, no traceback

import gymnasium as _gym  # noqa: E402  (after hold(), see pgkit.startup)

try:
    __version__ = _version("pgkit")
except _PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

#: pgkit's own environments, registered with gymnasium on ``import pgkit`` (entry points: nothing is imported until
#: an env is made). Each module's docstring documents the task and its optimal return.
BUILTIN_ENVS = {
    "pgkit/Bandit-v0": "pgkit.environments.bandit:BanditEnv",
    "pgkit/Squared-v0": "pgkit.environments.squared:SquaredEnv",
    "pgkit/Memory-v0": "pgkit.environments.memory:MemoryEnv",
    "pgkit/ToolSelection-v0": "pgkit.environments.tool_selection:ToolSelectionEnv",
    "pgkit/CartPoleNoVel-v1": "pgkit.environments.pomdp:cartpole_no_velocity",
    "pgkit/PendulumNoVel-v1": "pgkit.environments.pomdp:pendulum_no_velocity",
}
for _env_id, _entry_point in BUILTIN_ENVS.items():
    if _env_id not in _gym.registry:
        _gym.register(_env_id, entry_point=_entry_point)


def fit(
    config: str | _Path | _Mapping[str, _Any] | _Any,
    overrides: _Mapping[str, _Any] | _Sequence[str] | None = None,
    resume: str | _Path | None = None,
    callbacks: _Sequence[_Any] | None = None,
) -> _Any:
    """Train a config (YAML path, mapping or config object) with ``overrides`` (and Lightning ``callbacks``) and
    return its ``FitResult``; see :func:`pgkit.api.fit`. Imported lazily, so ``import pgkit`` stays light."""
    from pgkit.api import fit as _fit

    return _fit(config, overrides, resume, callbacks)


def load(checkpoint: str | _Path) -> _Any:
    """The trained policy in a checkpoint, an ``Agent`` with ``predict``; see :func:`pgkit.api.load`."""
    from pgkit.api import load as _load

    return _load(checkpoint)

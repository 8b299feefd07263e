"""pgkit: policy-gradient algorithms on PyTorch Lightning, driven by one typed YAML config."""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

import gymnasium as _gym

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

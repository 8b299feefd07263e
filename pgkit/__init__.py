"""pgkit: policy-gradient algorithms on PyTorch Lightning, driven by one typed YAML config."""

import gymnasium as _gym

__version__ = "0.1.0"

# pgkit's own environments: importing pgkit makes them available to gymnasium.make.
if "pgkit/ToolSelection-v0" not in _gym.registry:
    _gym.register("pgkit/ToolSelection-v0", entry_point="pgkit.environments.tool_selection:ToolSelectionEnv")

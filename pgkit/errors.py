"""Exceptions the CLI maps to exit codes."""


class UserError(Exception):
    """Bad user input (config, override, checkpoint path). The message is complete; exit code 2, no traceback."""


class ConfigError(UserError):
    """An invalid config file, field or override."""

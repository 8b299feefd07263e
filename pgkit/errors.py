"""Exceptions the CLI maps to exit codes."""


class UserError(Exception):
    """Bad user input (config, override, checkpoint path). The message is complete; exit code 2, no traceback."""


class ConfigError(UserError):
    """An invalid config file, field or override."""


class Interrupted(Exception):
    """Training stopped on a signal after writing its checkpoint; exit code ``128 + signum``."""

    def __init__(self, signum: int, checkpoint: str) -> None:
        super().__init__(f"interrupted by signal {signum}; last checkpoint {checkpoint}")
        self.signum, self.checkpoint = signum, checkpoint


class TrainingError(Exception):
    """A run that cannot go on (non-finite numbers, a failing environment). The message is complete: the CLI prints
    it without a traceback and exits 1; the last checkpoint written before it stays."""


class Terminated(BaseException):
    """SIGTERM outside training (start-up, evaluation): the CLI exits 143 with one line. A ``BaseException``, like
    ``KeyboardInterrupt``, so that no ``except Exception`` swallows it."""


class Interruption(KeyboardInterrupt):
    """Ctrl-C in the CLI, raised by its own SIGINT handler. A subclass, so every ``except KeyboardInterrupt`` still
    catches it, but not ``KeyboardInterrupt`` itself: CPython remembers a bare ``KeyboardInterrupt`` that left code
    it ran through ``PyRun_*`` (some extensions do so while they import) and then ends the process by SIGINT
    whatever exit code the program chose; this one it does not."""

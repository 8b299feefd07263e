"""Signals that reach the ``pgkit`` command before its ``main`` runs (while Python imports pgkit and gymnasium).

Python's default SIGINT handler would raise ``KeyboardInterrupt`` in the middle of an import: a traceback, an exit by
SIGINT instead of code 130, or, inside a C++ extension's initialisation, an abort. When this process *is* the
``pgkit`` command (the console script, or ``python -m pgkit``), ``pgkit/__init__`` calls :func:`hold` first thing:
SIGINT and SIGTERM are only remembered. :func:`pgkit.cli.main` imports the heavy libraries (:func:`preload`) while
they are still held, then installs its own handlers and exits with 130 or 143 if one came. Importing pgkit from any
other program changes nothing.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys

#: Signals received before ``main`` took over, in order.
PENDING: list[int] = []


def _remember(signum: int, frame: object) -> None:
    PENDING.append(signum)


def is_cli() -> bool:
    """Whether this process was started as the ``pgkit`` command: judged from the command line the interpreter
    really got (a child that ``multiprocessing`` spawns inherits ``sys.argv``, not that)."""
    argv = getattr(sys, "orig_argv", [])
    as_module = any(a == "-m" and b == "pgkit" for a, b in itertools.pairwise(argv))
    script = os.path.basename(argv[1]) if len(argv) > 1 else ""
    return as_module or script in ("pgkit", "pgkit.exe", "pgkit-script.py")


def hold() -> None:
    """Remember SIGINT and SIGTERM until ``main`` installs its handlers (the CLI only; main thread only)."""
    if is_cli():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _remember)


def holding() -> bool:
    """Whether signals are being held (this process is the ``pgkit`` command, and ``main`` has not taken over)."""
    return signal.getsignal(signal.SIGINT) is _remember


def preload() -> None:
    """Import torch, Lightning and MLflow while signals are held. An exception raised into a C++ extension while it
    initialises can abort the process (SIGABRT, seen with torch): a Ctrl-C in these seconds is acted on right after
    them instead."""
    import lightning.pytorch  # noqa: F401
    import mlflow  # noqa: F401
    import torch  # noqa: F401

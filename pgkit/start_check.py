"""The ranks of a torchrun job agree that every one of them is ready before the process group forms.

A rank whose checks fail before training (a config error, an env that can't be made on that node, a resume that
doesn't fit) exits before it reaches ``init_process_group``. The other ranks would then wait there for the group's
timeout (30 minutes by default), because neither torch nor Lightning knows that rank is gone. Lowering that timeout
would also cap every collective of the run, so instead each rank writes its state to torchrun's own rendezvous store
(the agent's TCPStore, which every worker reaches at ``MASTER_ADDR:MASTER_PORT``) and waits for the others' before
training: a rank that failed makes the others exit 1 at once, naming it and its error.

This covers failures before the process group forms: loading the config, checking the env (one env is built to
read its spaces) and the resume, building the module. A failure after it forms (the vector envs are made in
Lightning's ``setup``, training itself) reaches the others at their next collective instead, where gloo reports the
closed connection within seconds.

Written by hand because neither torch.distributed.elastic nor Lightning offers a pre-group readiness check.
Only torchrun provides an agent store; under other launchers (SLURM, Lightning's own) this is a no-op. It is off
too when torchrun may restart workers (``--max-restarts`` above 0): each node counts its own restarts, so the ranks
of one round could disagree on the keys they share.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta

from pgkit.errors import TrainingError

_PREFIX = "pgkit-start"


class StartCheck:
    """Readiness of this torchrun worker, shared with the job's other workers through the agent's store."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        attempt = f"{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}"
        self._key = f"{_PREFIX}/{attempt}/"
        self._store = None

    @staticmethod
    def applies() -> bool:
        """Whether this process is one of several torchrun workers sharing an agent store."""
        return (os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and int(os.environ.get("WORLD_SIZE", 1)) > 1
                and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", 0)) == 0)

    def _connect(self):
        if self._store is None:
            from torch.distributed import TCPStore

            self._store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                   timeout=timedelta(seconds=30), wait_for_workers=False)
        return self._store

    def failed(self, message: str) -> None:
        """Tell the other ranks this one stopped before training, and why (best effort: the error is already ours)."""
        with suppress(Exception):  # the store may be gone too; this rank's own error is what matters
            self._connect().set(self._key + str(self.rank), "failed: " + " ".join(message.split())[:500])

    def ready(self) -> None:
        """Say this rank is ready, then wait until every rank is, or raise as soon as one reports a failure."""
        store = self._connect()
        store.set(self._key + str(self.rank), "ready")
        waiting = set(range(self.world_size))
        deadline = time.monotonic() + self.timeout
        while waiting:
            for rank in sorted(waiting):
                key = self._key + str(rank)
                if not store.check([key]):
                    continue
                state = store.get(key).decode()
                if state.startswith("failed: "):
                    raise TrainingError(f"rank {rank} stopped before training: {state[len('failed: '):]}")
                waiting.discard(rank)
            if waiting and time.monotonic() > deadline:
                message = (f"ranks {sorted(waiting)} were not ready after trainer.start_timeout={self.timeout:g} s "
                           "(a node that crashed, or is much slower to build its envs and model)")
                self.failed(f"rank {self.rank} gave up: {message}")  # so a late rank does not go on alone
                raise TrainingError(message)
            if waiting:
                time.sleep(0.1)


@contextmanager
def reporting_start_failures() -> Iterator[None]:
    """Anything raised in the block (this rank's checks before training) is reported to the other ranks."""
    try:
        yield
    except BaseException as exc:
        if StartCheck.applies():
            StartCheck(0).failed(str(exc) or type(exc).__name__)
        raise


def wait_for_all_ranks(timeout: float) -> None:
    """Under torchrun with several workers: mark this rank ready and wait for the others (see module docstring)."""
    if StartCheck.applies():
        StartCheck(timeout).ready()

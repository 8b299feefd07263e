"""The ranks of a multi-process job agree that every one of them is ready before the process group forms.

A rank whose checks fail before training (a config error, an env that can't be made on that node, a resume that
doesn't fit) exits before it reaches ``init_process_group``. The other ranks would then wait there for the group's
timeout (30 minutes by default), because neither torch nor Lightning knows that rank is gone. Lowering that timeout
would also cap every collective of the run, so instead each rank writes its state to a key-value store that every
process of the job reaches at ``MASTER_ADDR:MASTER_PORT``, and waits for the others' before training: a rank that
failed makes the others exit 1 at once, naming it and its error.

- **torchrun**: the store is the agent's own rendezvous store.
- **Lightning's own launcher across nodes** (each node started with ``MASTER_ADDR``, ``MASTER_PORT`` and
  ``NODE_RANK``): there is no agent, so the first process of node 0 hosts a ``TCPStore`` on ``MASTER_PORT`` as soon
  as it starts, and tells torch to use it as the group's store (``TORCHELASTIC_USE_AGENT_STORE``, exactly as under
  torchrun). A process that fails before it even knows its rank (its config does not parse) reports as its node. If
  node 0 itself fails, it keeps the store up until the others have read why (30 s at most).

This covers failures before the process group forms: loading the config, checking the env (one env is built to
read its spaces) and the resume, building the module. A failure after it forms (the vector envs are made in
Lightning's ``setup``, training itself) reaches the others at their next collective instead, where gloo reports the
closed connection within seconds. SLURM's launcher has no such store either; there a rank that never starts leaves
the others waiting for the process group's timeout (docs/distributed.md).

Written by hand because neither torch.distributed.elastic nor Lightning offers a pre-group readiness check. It is
off when torchrun may restart workers (``--max-restarts`` above 0): each node counts its own restarts, so the ranks
of one round could disagree on the keys they share.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import Any

from pgkit.errors import TrainingError

_PREFIX = "pgkit-start"
#: Set in every process of a job whose store pgkit hosts (inherited by the processes Lightning starts).
_HOSTED_VAR = "PGKIT_START_STORE"
#: Seconds a process that failed before knowing the world waits to reach the store, and node 0 keeps it up after
#: failing itself.
REPORT_SECONDS = 30.0

_hosted_store: Any = None  # the store node 0 hosts, alive for the whole run (torch's group uses it too)


def _lightning_multinode() -> bool:
    """Whether this process was started by hand on one node of a Lightning multi-node job (not under torchrun, and
    not one of the processes Lightning itself starts, which have ``LOCAL_RANK`` and inherit their parent's
    choice)."""
    return (all(name in os.environ for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK"))
            and not any(name in os.environ for name in ("RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID")))


def host_start_store() -> None:
    """On Lightning's launcher across nodes, before anything else: node 0's first process hosts the job's store on
    ``MASTER_PORT``; every process marks itself as taking part (see the module docstring)."""
    global _hosted_store
    if os.environ.get(_HOSTED_VAR) or not _lightning_multinode():
        return
    os.environ[_HOSTED_VAR] = "1"
    if os.environ["NODE_RANK"] != "0":
        return
    from torch.distributed import TCPStore

    try:
        _hosted_store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=True,
                                 wait_for_workers=False, timeout=timedelta(seconds=60))
    except (RuntimeError, ValueError, OSError):  # the port is taken: no pre-check, torch binds it as usual
        os.environ.pop(_HOSTED_VAR, None)
        return
    os.environ["TORCHELASTIC_USE_AGENT_STORE"] = "True"  # torch's group joins this store instead of binding


def _node_label() -> str:
    return f"node {os.environ.get('NODE_RANK', '?')}"


class StartCheck:
    """Readiness of this process, shared with the job's other processes through the job's store."""

    def __init__(self, timeout: float, rank: int | None = None, world_size: int | None = None) -> None:
        self.timeout = timeout
        self.rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        self.world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
        attempt = f"{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}"
        self._key = f"{_PREFIX}/{attempt}/"
        self._store = None

    @staticmethod
    def applies() -> bool:
        """Whether this process is one of several sharing a store: torchrun's agent store, or pgkit's own."""
        if os.environ.get(_HOSTED_VAR):
            return True
        return (os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and int(os.environ.get("WORLD_SIZE", 1)) > 1
                and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", 0)) == 0)

    def _connect(self, timeout: float = 30.0):
        if self._store is None:
            if _hosted_store is not None:
                self._store = _hosted_store
            else:
                from torch.distributed import TCPStore

                self._store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                       timeout=timedelta(seconds=timeout), wait_for_workers=False)
        return self._store

    def failed(self, message: str, who: str | None = None) -> None:
        """Tell the other ranks this one stopped before training, and why (best effort: the error is already ours).
        Node 0's hosting process keeps the store up until the others have read it."""
        text = f"{who or f'rank {self.rank}'} stopped before training: " + " ".join(message.split())[:500]
        with suppress(Exception):  # the store may be gone too; this rank's own error is what matters
            store = self._connect(REPORT_SECONDS)
            store.set(self._key + "failed", text)
            if _hosted_store is not None:
                deadline = time.monotonic() + REPORT_SECONDS
                expected = max(int(os.environ.get("WORLD_SIZE", 2)) - 1, 1)
                while time.monotonic() < deadline and store.add(self._key + "seen", 0) < expected:
                    time.sleep(0.2)

    def ready(self) -> None:
        """Say this rank is ready, then wait until every rank is, or raise as soon as one reports a failure."""
        store = self._connect(self.timeout)
        store.set(self._key + str(self.rank), "ready")
        waiting = set(range(self.world_size))
        deadline = time.monotonic() + self.timeout
        while waiting:
            if store.check([self._key + "failed"]):
                store.add(self._key + "seen", 1)
                raise TrainingError(store.get(self._key + "failed").decode())
            for rank in sorted(waiting):
                key = self._key + str(rank)
                if store.check([key]):
                    waiting.discard(rank)
            if waiting and time.monotonic() > deadline:
                message = (f"ranks {sorted(waiting)} were not ready after trainer.start_timeout={self.timeout:g} s "
                           "(a node that crashed, or is much slower to build its envs and model)")
                self.failed(f"gave up: {message}")  # so a late rank does not go on alone
                raise TrainingError(message)
            if waiting:
                time.sleep(0.1)


@contextmanager
def reporting_start_failures(rank: int | None = None, world_size: int | None = None) -> Iterator[None]:
    """Anything raised in the block (this rank's checks before training) is reported to the other ranks."""
    try:
        yield
    except BaseException as exc:
        if StartCheck.applies():
            who = f"rank {rank}" if rank is not None else (
                f"rank {os.environ['RANK']}" if "RANK" in os.environ else _node_label())
            StartCheck(0, rank, world_size).failed(str(exc) or type(exc).__name__, who)
        raise


def wait_for_all_ranks(timeout: float, rank: int, world_size: int, devices_per_node: int = 1) -> None:
    """With several processes sharing a store: mark this rank ready and wait for the others (see the module
    docstring). Under Lightning's launcher, a node's other processes only start inside ``trainer.fit``, so there the
    nodes' first processes wait for each other, one per node."""
    if world_size <= 1 or not StartCheck.applies():
        return
    if os.environ.get(_HOSTED_VAR):
        if "LOCAL_RANK" in os.environ:  # started by Lightning after its node's check
            return
        rank, world_size = rank // devices_per_node, world_size // devices_per_node
        if world_size <= 1:
            return
    StartCheck(timeout, rank, world_size).ready()

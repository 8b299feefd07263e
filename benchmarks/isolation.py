"""Run a measurement in a fresh process, so none inherits another's threads, caches or allocator."""

from __future__ import annotations

import multiprocessing as mp
import os


def _child(queue: mp.Queue, fn, args) -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")
    queue.put(fn(*args))


def isolated(fn, *args):
    """Run ``fn(*args)`` in a fresh spawned process and return its result (``fn`` must be importable)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, args))
    proc.start()
    value = queue.get()
    proc.join()
    return value

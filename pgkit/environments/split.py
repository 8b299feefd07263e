"""``env.backend: split``: the sub-envs in two halves that step at the same time, one in this process and one in a
worker process, so a 2-core machine steps envs on both cores.

Why by hand: gymnasium's ``AsyncVectorEnv`` gives every sub-env its own process, and on a small machine the
inter-process round trip per sub-env costs more than a MuJoCo step (HalfCheetah: 4342 steps/s for 2 async envs
against 19246 for 8 sync ones). Here each half is a ``SyncVectorEnv`` and there is one round trip per vector step:
the worker steps its half while this process steps the other. envpool (on PyPI) steps its own C++ ports of the
MuJoCo v5 tasks in threads: measured, they equal gymnasium's to float rounding, but they trained no faster here and
were not made a backend (docs/benchmarks.md, "Both cores").

The two halves behave as one ``SyncVectorEnv`` of all the sub-envs: the same observations, rewards, flags and
infos (``final_obs``, episode statistics), same-step autoreset, and seeds split as ``SyncVectorEnv`` gives them.
Pickling it fetches the worker's half, and unpickling starts a new worker with it, so checkpoints keep the env
state and a resumed run continues exactly, as with ``sync``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import CloudpickleWrapper, batch_space


class _Shared:
    """Shared-memory arrays for one half's actions, observations, rewards and flags (Box observations, Box or
    Discrete actions): pickling arrays through a pipe cost 124 us a round trip here, a bare message 29 us."""

    def __init__(self, ctx: Any, n: int, obs_space: gym.spaces.Box, act_space: gym.Space) -> None:
        self.layout = {
            "action": ((n, *act_space.shape), np.dtype(act_space.dtype)),
            "obs": ((n, *obs_space.shape), np.dtype(obs_space.dtype)),
            "reward": ((n,), np.dtype(np.float64)),
            "terminated": ((n,), np.dtype(np.bool_)),
            "truncated": ((n,), np.dtype(np.bool_)),
        }
        self.memory = {k: ctx.RawArray("b", max(1, int(np.prod(shape)) * dtype.itemsize))
                       for k, (shape, dtype) in self.layout.items()}

    def views(self) -> dict[str, np.ndarray]:
        """numpy arrays over the shared memory (in either process)."""
        return {k: np.frombuffer(self.memory[k], dtype=dtype, count=int(np.prod(shape))).reshape(shape)
                for k, (shape, dtype) in self.layout.items()}


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS reports it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


SPIN_S = 0.002 if usable_cores() > 1 else 0.0
"""How long a side polls for the other's message before it blocks. Blocking lets the OS park the core, and waking a
parked core cost about 150 us per step on this project's 2-core VM; the envs step every few hundred microseconds
during a rollout, and between rollouts the wait blocks after 2 ms. On one core, polling would only take the time
from the process it waits for, so it blocks at once."""


def _wait(conn, parent: int | None = None) -> None:
    """Return when ``conn`` has a message: poll for up to :data:`SPIN_S`, then block. With ``parent`` (in the
    worker), raise ``EOFError`` once that process is gone: other forked children may hold copies of its end of the
    pipe, so the pipe alone never reports it."""
    deadline = time.perf_counter() + SPIN_S
    while not conn.poll():
        if time.perf_counter() > deadline:
            while not conn.poll(1.0):
                if parent is not None and os.getppid() != parent:
                    raise EOFError("the parent process is gone")
            return


def _worker(  # pragma: no cover - runs in the worker process
    conn, source: CloudpickleWrapper | bytes, autoreset_mode: AutoresetMode, shared: _Shared | None
) -> None:
    """Serve ``reset``, ``step`` and ``close`` for one half; an exception is sent back as text, then the worker
    waits for ``close``. With ``shared`` buffers a step reads its actions from them and writes its results there,
    and only the info dict (usually empty) crosses the pipe."""
    # The fork copied the parent's signal handlers (pgkit's and Lightning's SIGTERM handlers only set a flag): restore
    # the default, so terminate() ends this process; Ctrl-C is the parent's to handle, and it closes the worker.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    envs = None
    try:
        # its half from the sub-env constructors, or as a checkpoint saved it (exact resume)
        envs = pickle.loads(source) if isinstance(source, bytes) else SyncVectorEnv(source.fn,
                                                                                    autoreset_mode=autoreset_mode)
        views = shared.views() if shared is not None else None
        conn.send(("ok", None))
        parent = os.getppid()
        while True:
            _wait(conn, parent)
            command, data = conn.recv()
            if command == "close":
                break
            try:
                if command == "step_shared":
                    obs, reward, terminated, truncated, info = envs.step(views["action"].copy())
                    views["obs"][:], views["reward"][:] = obs, reward
                    views["terminated"][:], views["truncated"][:] = terminated, truncated
                    result = info or None
                elif command == "get_state":
                    result = pickle.dumps(envs, protocol=pickle.HIGHEST_PROTOCOL)
                else:
                    result = envs.step(data) if command == "step" else envs.reset(**data)
                conn.send(("ok", result))
            except Exception as exc:  # the parent raises it, with the worker's traceback
                conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    except EOFError:  # the parent is gone: nothing to answer
        pass
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        if envs is not None:
            envs.close()
        conn.close()


def _join(a: Any, b: Any) -> Any:
    """Two batched observations (arrays, or dicts and tuples of them) as one batch, ``a``'s envs first."""
    if isinstance(a, dict):
        return {k: _join(a[k], b[k]) for k in a}
    if isinstance(a, tuple):
        return tuple(_join(x, y) for x, y in zip(a, b, strict=True))
    return np.concatenate([a, b])


def _filler(like: Any, n: int) -> Any:
    """What a half without ``like``'s info key holds for its ``n`` envs: nothing, and a False mask."""
    if isinstance(like, dict):
        return {k: _filler(v, n) for k, v in like.items()}
    like = np.asarray(like)  # batched: [n_other, *value shape]
    if like.dtype == object:
        return np.full((n, *like.shape[1:]), None, dtype=object)
    return np.zeros((n, *like.shape[1:]), dtype=like.dtype)


def _join_info(a: dict[str, Any], b: dict[str, Any], na: int, nb: int) -> dict[str, Any]:
    """Two vector-env info dicts as one, as ``SyncVectorEnv`` would have built it for all ``na + nb`` envs."""
    out: dict[str, Any] = {}
    for key in {**a, **b}:
        x = a[key] if key in a else _filler(b[key], na)
        y = b[key] if key in b else _filler(a[key], nb)
        out[key] = _join_info(x, y, na, nb) if isinstance(x, dict) else np.concatenate([np.asarray(x), np.asarray(y)])
    return out


class SplitVectorEnv(gym.vector.VectorEnv):
    """All sub-envs as one vector env, stepped in two halves at once: the first ``ceil(n / 2)`` here, the rest in a
    worker process."""

    def __init__(
        self, env_fns: Sequence[Callable[[], gym.Env]], autoreset_mode: AutoresetMode = AutoresetMode.SAME_STEP
    ) -> None:
        if len(env_fns) < 2:
            raise ValueError(f"the split backend needs at least 2 sub-envs, got {len(env_fns)}")
        self.num_envs = len(env_fns)
        self._half = (self.num_envs + 1) // 2
        self._autoreset_mode = autoreset_mode
        self._local = SyncVectorEnv(env_fns[: self._half], autoreset_mode=autoreset_mode)
        self._start(CloudpickleWrapper(list(env_fns[self._half :])))

    def _start(self, source: CloudpickleWrapper | bytes) -> None:
        """Start the worker with its half (constructors, or a pickled ``SyncVectorEnv``) and set the spaces."""
        # fork on Linux, as gymnasium's AsyncVectorEnv: the worker only steps envs (no torch, no CUDA), and unlike
        # spawn and forkserver it does not import the caller's main module again, so scripts need no main guard.
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        obs_space, act_space = self._local.single_observation_space, self._local.single_action_space
        shared = None
        if isinstance(obs_space, gym.spaces.Box) and isinstance(act_space, (gym.spaces.Box, gym.spaces.Discrete)):
            shared = _Shared(ctx, self.num_envs - self._half, obs_space, act_space)
        self._views = shared.views() if shared is not None else None
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_worker, args=(child, source, self._autoreset_mode, shared), daemon=True,
                                    name="pgkit-split-envs")
        self._process.start()
        child.close()
        self._receive()  # the worker built its half, or says why not
        self.single_observation_space, self.single_action_space = obs_space, act_space
        self.observation_space = batch_space(obs_space, self.num_envs)
        self.action_space = batch_space(act_space, self.num_envs)
        self.metadata = {**self._local.metadata, "autoreset_mode": self._autoreset_mode}
        self.render_mode = self._local.render_mode
        self.spec = self._local.spec

    def _both(self, local_call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run this process's half while the worker runs its own; if this half raises, take the worker's reply
        first, so the next call does not read this one's."""
        try:
            return local_call(*args, **kwargs)
        except BaseException:
            with suppress(Exception):
                self._receive()
            raise

    def _receive(self) -> Any:
        _wait(self._conn)
        status, payload = self._conn.recv()
        if status == "error":
            raise RuntimeError(f"the split backend's worker process failed: {payload}")
        return payload

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        if isinstance(seed, int):  # as SyncVectorEnv: sub-env i gets seed + i
            seed = [seed + i for i in range(self.num_envs)]
        if options and "reset_mask" in options:
            raise ValueError("the split backend does not support options['reset_mask']; use env.backend: sync")
        first, second = (None, None) if seed is None else (list(seed[: self._half]), list(seed[self._half :]))
        self._conn.send(("reset", {"seed": second, "options": options}))
        obs, info = self._both(self._local.reset, seed=first, options=options)
        other_obs, other_info = self._receive()
        return _join(obs, other_obs), _join_info(info, other_info, self._half, self.num_envs - self._half)

    def step(self, actions: Any):
        actions = np.asarray(actions) if not isinstance(actions, (dict, tuple)) else actions
        views = self._views
        if views is not None and getattr(actions, "dtype", None) != views["action"].dtype:
            views = None  # the env must see the caller's dtype; only the space's own goes through shared memory
        if views is not None:
            views["action"][:] = actions[self._half :]
            self._conn.send(("step_shared", None))
        else:
            self._conn.send(("step", _part(actions, slice(self._half, None))))
        obs, reward, terminated, truncated, info = self._both(self._local.step, _part(actions, slice(None, self._half)))
        if views is not None:
            i = self._receive() or {}
            o, r, te, tr = views["obs"], views["reward"], views["terminated"], views["truncated"]
        else:
            o, r, te, tr, i = self._receive()
        return (_join(obs, o), np.concatenate([reward, r]), np.concatenate([terminated, te]),
                np.concatenate([truncated, tr]), _join_info(info, i, self._half, self.num_envs - self._half))

    def close_extras(self, **kwargs: Any) -> None:
        try:
            self._local.close()
        finally:
            self._stop_worker()

    def _stop_worker(self) -> None:
        if self._process.is_alive():
            with suppress(BrokenPipeError, OSError):  # the worker may be gone already
                self._conn.send(("close", None))
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.terminate()
        self._conn.close()

    def __getstate__(self) -> dict[str, Any]:
        """Both halves' envs, the worker's fetched from it: what a checkpoint's env state needs."""
        self._conn.send(("get_state", None))
        return {"local": self._local, "remote": self._receive(), "num_envs": self.num_envs, "half": self._half,
                "autoreset_mode": self._autoreset_mode, "action_space_rng": self.action_space._np_random}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.num_envs, self._half = state["num_envs"], state["half"]
        self._autoreset_mode, self._local = state["autoreset_mode"], state["local"]
        self._start(state["remote"])
        self.action_space._np_random = state["action_space_rng"]  # Space has no public setter


def _part(actions: Any, part: slice) -> Any:
    """The actions of one half (arrays, or dicts and tuples of them)."""
    if isinstance(actions, dict):
        return {k: _part(v, part) for k, v in actions.items()}
    if isinstance(actions, tuple):
        return tuple(_part(v, part) for v in actions)
    return actions[part]

"""``pgkit sweep``: an Optuna study over a config, trials run by worker processes on one or many machines.

The command checks the config and its search space, creates (or joins) the study and the sweep's MLflow run, then
runs trials until the study has ``trials`` of them: in this process, or in ``--workers K`` processes that each run
one trial at a time. Any machine that starts the same command with the same ``storage`` joins the study.
Afterwards it writes the summary, ``best.yaml`` and Optuna's plots (:mod:`pgkit.sweeps.report`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgkit.errors import ConfigError, Terminated, UserError
from pgkit.sweeps import study as studies
from pgkit.sweeps.space import base_data, check_space, study_name, sweep_of
from pgkit.sweeps.trial import Surplus, SweepContext, SweepStopped, TrialFailed, objective
from pgkit.tracking import absolute_tracking_uri, store_lock

#: Environment variable through which the command hands its sweep's MLflow run to its worker processes.
PARENT_VAR = "PGKIT_SWEEP_PARENT"


@dataclass
class Prepared:
    """A checked sweep, its study and the context its trials share."""

    cfg: Any
    study: Any
    storage_url: str
    ctx: SweepContext


def prepare(config: str | None, overrides: list[str], trials: int | None, log: Any, main: bool) -> Prepared:
    """Everything that can fail as bad input, before any trial: the config, the search space, the storage, the
    study (created by the main process), the sweep folder and the parent MLflow run."""
    from pgkit.config_loading import load_config
    from pgkit.training import with_absolute_store

    if config is None:
        raise UserError("pgkit sweep: give --config FILE (with a sweep section)")
    cfg = with_absolute_store(load_config(config, overrides))
    sweep = sweep_of(cfg)
    if trials is not None and trials < 1:
        raise UserError(f"pgkit sweep: --trials: must be at least 1 (got {trials})")
    if cfg.trainer.devices * cfg.trainer.num_nodes > 1:
        raise ConfigError(f"config error: trainer.devices: a sweep's trials run one process each; spread trials with "
                          f"--workers and more machines instead (got {cfg.trainer.devices})")
    if main:
        check_space(cfg)
    budget = trials or sweep.trials
    if sweep.sampler == "grid":
        budget = min(budget, sweep.grid_size())
    name = study_name(cfg)
    storage_url = absolute_tracking_uri(sweep.storage)
    storage = studies.open_storage(storage_url, sweep.stale_after_s)
    base = base_data(cfg)
    fingerprint = {"config": {k: v for k, v in base.items() if k != "logger"},
                   **sweep.model_dump(mode="json", include={"metric", "direction", "sampler", "params"})}
    seed = sweep.seed if sweep.seed is not None else cfg.trainer.seed
    study = studies.open_study(storage, name, sweep, seed, cfg.trainer.total_timesteps, fingerprint, create=main)
    explicit = "output_dir" in cfg.trainer.model_fields_set
    sweep_dir = Path(cfg.trainer.output_dir if explicit else f"runs/{name}-sweep").resolve()
    if main:
        studies.check_folder(sweep_dir, study, name, storage_url)
        parent = _parent_run(study, cfg, name, storage_url)
    else:
        parent = os.environ.get(PARENT_VAR) or None
    ctx = SweepContext(name=name, sweep=sweep, budget=budget, base=base, sweep_dir=sweep_dir,
                       parent_run_id=parent, log=log, seed=seed)
    return Prepared(cfg, study, storage_url, ctx)


def _parent_run(study: Any, cfg: Any, name: str, storage_url: str) -> str | None:
    from pgkit.sweeps.report import parent_run
    from pgkit.tracking import check_tracking_uri, tracking_settings

    if cfg.logger.enabled:
        check_tracking_uri(cfg.logger.tracking_uri)
    with tracking_settings():  # MLflow's own notes on a new store stay quiet, as in a run
        return parent_run(study, cfg, name, storage_url)


def work(prepared: Prepared) -> None:
    """Run trials until the study's budget is spent and no trial runs anywhere. Raises :class:`SweepStopped` on
    Ctrl-C or SIGTERM during a trial (the trial is queued again), :class:`ConfigError` when the metric is never
    logged."""
    import optuna

    study, ctx = prepared.study, prepared.ctx
    said_waiting = False
    while True:
        with store_lock(prepared.storage_url) as turn:
            optuna.storages.fail_stale_trials(study)  # trials of dead processes: failed, and queued again
            counts = studies.state_counts(study, ctx.budget)
            if not counts["waiting"] and counts["counted"] >= ctx.budget:
                if not counts["running"]:
                    return
                turn.release()
                if not said_waiting:
                    ctx.log(f"waiting for the last {counts['running']} running trial(s) (one whose process died "
                            f"runs again here after {ctx.sweep.stale_after_s:.0f} s without heartbeats)")
                    said_waiting = True
                time.sleep(1.0)
                continue
            said_waiting = False
            ctx.turn = turn
            studies.reseed(study, ctx.sweep, ctx.seed, os.uname().nodename, os.getpid(), len(study.trials))
            try:
                study.optimize(lambda trial: objective(ctx, trial), n_trials=1, catch=(TrialFailed, Surplus),
                               gc_after_trial=True)
            except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as exc:
                if "finished" not in str(exc).lower() and "cannot tell" not in str(exc).lower():
                    raise
                # The trial was judged lost (its heartbeats late) and queued again; its retry runs it.
        if ctx.metric_missing:
            raise ConfigError(ctx.metric_missing)


def run_sweep(config: str | None, overrides: list[str], trials: int | None = None, workers: int = 1,
              log: Any = print) -> int:
    """``pgkit sweep``: returns the exit code (0 done, 128 + signum when stopped, 2 bad input, 1 a worker failed)."""
    if workers < 1:
        raise UserError(f"pgkit sweep: --workers: must be at least 1 (got {workers})")
    # Workers are forked now, before anything opens a database, so they start with torch, Lightning and MLflow
    # already imported (a fresh interpreter takes seconds to import them); each opens its own connections.
    children = _fork_workers(workers, config, overrides, trials) if workers > 1 else []
    try:
        prepared = prepare(config, overrides, trials, log, main=True)
    except BaseException:
        _release(children, None)
        raise
    if children:
        _release(children, prepared.ctx.parent_run_id or "")
        log(f"sweep {prepared.ctx.name!r}: {workers} workers, study in {studies.masked(prepared.storage_url)}, "
            f"trials in {prepared.ctx.sweep_dir}")
        code = _wait(children)
    else:
        try:
            work(prepared)
            code = 0
        except SweepStopped as exc:
            code = 128 + exc.signum
        except (KeyboardInterrupt, Terminated) as exc:  # between trials: nothing to save, the table still comes
            code = 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    from pgkit.sweeps.report import publish

    counts = studies.state_counts(prepared.study, prepared.ctx.budget)
    finished = counts["done"] >= prepared.ctx.budget and not counts["running"] and not counts["waiting"]
    publish(prepared.study, prepared.cfg, prepared.ctx, log, finished)
    if code and code != 2:
        log(f"pgkit: sweep stopped; run the same command again to continue study {prepared.ctx.name!r}")
    return code


def _fork_workers(workers: int, config: str | None, overrides: list[str], trials: int | None) -> list[tuple[int, int]]:
    """Fork the worker processes; each waits until this process has checked the sweep and made the study, then
    runs trials. Returns ``(pid, pipe)`` per worker."""
    children = []
    for index in range(workers):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            os.close(write_fd)
            _worker(index, read_fd, config, overrides, trials)
        os.close(read_fd)
        children.append((pid, write_fd))
    return children


def _worker(index: int, read_fd: int, config: str | None, overrides: list[str], trials: int | None) -> None:
    code = 1
    try:
        os.setsid()  # a terminal's Ctrl-C reaches the command only, which passes it on once (see _wait)
        os.environ["TQDM_DISABLE"] = "1"  # K progress bars on one terminal read as noise; trials print a line each
        for stream in (sys.stdout, sys.stderr):  # whole lines, so the workers' lines never interleave mid-line
            with contextlib.suppress(AttributeError, ValueError):
                stream.reconfigure(line_buffering=True)
        message = os.read(read_fd, 4096).decode()
        if not message.startswith("go "):
            code = 0  # the command found bad input and said so
            return
        os.environ[PARENT_VAR] = message.removeprefix("go ")
        work(prepare(config, overrides, trials, print, main=False))
        code = 0
    except SweepStopped as exc:
        code = 128 + exc.signum
    except UserError as exc:
        print(" ".join(str(exc).splitlines()), file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    except Terminated:
        code = 128 + signal.SIGTERM
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # no interpreter shutdown: the command's own objects (and exit handlers) are not the worker's


def _release(children: list[tuple[int, int]], parent_run_id: str | None) -> None:
    """Let the workers go (with the sweep's MLflow run), or tell them to stop (``None``)."""
    for _, write_fd in children:
        with contextlib.suppress(OSError):
            os.write(write_fd, b"stop" if parent_run_id is None else f"go {parent_run_id}".encode())
            os.close(write_fd)
    if parent_run_id is None:
        for pid, _ in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _wait(children: list[tuple[int, int]]) -> int:
    """Wait for the workers. A signal to this process goes on to them, once per signal: each saves its iteration
    and queues its trial. A worker that found bad input (exit 2) stops the others."""
    codes: dict[int, int] = {}
    stopped = 0
    while len(codes) < len(children):
        try:
            for pid, _ in children:
                if pid in codes:
                    continue
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
                    if codes[pid] == 2 and not stopped:
                        stopped = 2
                        _signal_all(children, codes, signal.SIGINT)
            time.sleep(0.2)
        except (KeyboardInterrupt, Terminated) as exc:
            signum = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM
            stopped = stopped or 128 + signum
            _signal_all(children, codes, signum)
    if stopped:
        return stopped
    bad = [c if c >= 0 else 128 - c for c in codes.values() if c]
    return bad[0] if bad else 0


def _signal_all(children: list[tuple[int, int]], codes: dict[int, int], signum: int) -> None:
    for pid, _ in children:
        if pid not in codes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

"""``pgkit sweep``: an Optuna study over a config, trials run by worker processes on one or many machines.

The command checks the config and its search space, creates (or joins) the study and the sweep's MLflow run, then
runs trials until the study has ``trials`` of them: in this process, or in ``--workers K`` processes that each run
one trial at a time. Any machine that starts the same command with the same ``storage`` joins the study.
Afterwards it writes the summary, ``best.yaml`` and Optuna's plots (:mod:`pgkit.sweeps.report`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgkit.errors import ConfigError, Terminated, UserError
from pgkit.sweeps import study as studies
from pgkit.sweeps.space import base_data, check_space, study_name, sweep_of
from pgkit.sweeps.trial import Surplus, SweepContext, SweepStopped, TrialFailed, objective

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
    storage_url = studies.absolute_storage(sweep.storage)
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
        with studies.local_turn(prepared.storage_url) as turn:
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
            study.optimize(lambda trial: objective(ctx, trial), n_trials=1, catch=(TrialFailed, Surplus),
                           gc_after_trial=True)
        if ctx.metric_missing:
            raise ConfigError(ctx.metric_missing)


def run_sweep(config: str | None, overrides: list[str], trials: int | None = None, workers: int = 1,
              log: Any = print) -> int:
    """``pgkit sweep``: returns the exit code (0 done, 128 + signum when stopped, 1 when a worker failed)."""
    worker = os.environ.get("PGKIT_SWEEP_WORKER")
    if workers < 1:
        raise UserError(f"pgkit sweep: --workers: must be at least 1 (got {workers})")
    prepared = prepare(config, overrides, trials, log, main=worker is None)
    if worker is not None:  # one of the command's worker processes
        try:
            work(prepared)
        except SweepStopped as exc:
            return 128 + exc.signum
        return 0
    code = _run_workers(prepared, config, overrides, trials, workers, log)
    from pgkit.sweeps.report import publish

    counts = studies.state_counts(prepared.study, prepared.ctx.budget)
    finished = counts["done"] >= prepared.ctx.budget and not counts["running"] and not counts["waiting"]
    publish(prepared.study, prepared.cfg, prepared.ctx, log, finished)
    if code and code != 2:
        log(f"pgkit: sweep stopped; run the same command again to continue study {prepared.ctx.name!r}")
    return code


def _run_workers(prepared: Prepared, config: str | None, overrides: list[str], trials: int | None, workers: int,
                 log: Any) -> int:
    if workers == 1:
        try:
            work(prepared)
        except SweepStopped as exc:
            return 128 + exc.signum
        return 0
    args = [sys.executable, "-m", "pgkit", "sweep", "--config", str(config)]
    for assignment in overrides:
        args += ["--set", assignment]
    if trials is not None:
        args += ["--trials", str(trials)]
    procs = []
    for index in range(workers):
        env = {**os.environ, "PGKIT_SWEEP_WORKER": str(index), "TQDM_DISABLE": "1",
               PARENT_VAR: prepared.ctx.parent_run_id or ""}
        procs.append(subprocess.Popen(args, env=env, start_new_session=True))
    log(f"sweep {prepared.ctx.name!r}: {workers} workers, study in {studies.masked(prepared.storage_url)}, "
        f"trials in {prepared.ctx.sweep_dir}")
    return _wait(procs)


def _wait(procs: list[subprocess.Popen]) -> int:
    """Wait for the workers. A signal to this process goes on to them, once per signal (they have sessions of their
    own, so a terminal's Ctrl-C reaches them only through here): each saves its iteration and queues its trial. A
    worker that found bad input (exit 2) stops the others."""
    stopped = 0
    while True:
        try:
            while any(p.poll() is None for p in procs):
                if not stopped and any(p.poll() == 2 for p in procs):
                    stopped = 2
                    _signal_all(procs, signal.SIGINT)
                time.sleep(0.2)
            break
        except (KeyboardInterrupt, Terminated) as exc:
            signum = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM
            stopped = stopped or 128 + signum
            _signal_all(procs, signum)
    codes = [p.returncode for p in procs]
    if stopped:
        return stopped
    bad = [c for c in codes if c]
    return bad[0] if bad else 0


def _signal_all(procs: list[subprocess.Popen], signum: int) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signum)

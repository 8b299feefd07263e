"""``pgkit bench --storage URL``: the runs of a suite shared by every machine that starts the same command.

The suite's runs are the trials of one Optuna study, ``bench-<suite name>``, in the shared storage (PostgreSQL for
several machines): the process that creates the study queues every (algorithm, env, seed) as a waiting trial, and
each worker process of each machine takes the next one (Optuna hands a waiting trial to one process only, under
the database's row lock), trains it, and stores its result in the trial. A run whose process died is queued again
through Optuna's heartbeats, and a run stopped by Ctrl-C or SIGTERM is queued again at once; both start afresh
(a suite's runs are short enough, and their own folders are local to the machine that ran them). Any machine
writes the reports from the results in the storage.
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from pgkit.errors import UserError
from pgkit.sweeps import study as studies
from pgkit.sweeps.trial import Surplus, SweepStopped, TrialFailed
from pgkit.tracking import absolute_tracking_uri, store_lock

CELL = "pgkit.cell"
RECORD = "pgkit.record"
#: Seconds a joining process waits for the creator of the study to queue the suite's runs.
QUEUE_WAIT_S = 120.0


def open_suite_study(url: str, suite_name: str, names: list[str], log: Any) -> tuple[Any, Any]:
    """The suite's study, created with every run queued, or joined. A study that holds another selection of runs
    is refused (exit 2)."""
    import optuna

    storage = studies.open_storage(url, 120.0)
    name = f"bench-{suite_name}"
    try:
        study = optuna.create_study(storage=storage, study_name=name, load_if_exists=False)
        for cell in names:
            study.enqueue_trial({}, user_attrs={CELL: cell})
        study.set_user_attr("pgkit.cells", names)
        log(f"bench {suite_name}: queued {len(names)} runs in {studies.masked(url)}")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        deadline = time.monotonic() + QUEUE_WAIT_S
        while "pgkit.cells" not in study.user_attrs:
            if time.monotonic() > deadline:
                raise UserError(f"bench error: --storage: study {name!r} was created but its runs were never "
                                "queued (its creator stopped); delete it with `optuna delete-study --study-name "
                                f"{name} --storage URL` and start again") from None
            time.sleep(1.0)
        stored = study.user_attrs["pgkit.cells"]
        if sorted(stored) != sorted(names):
            raise UserError(f"bench error: --storage: study {name!r} holds another selection of runs ({len(stored)} "
                            f"runs, {len(set(names) - set(stored))} of this selection missing); use the same "
                            "--algorithms, --envs and --seeds on every machine") from None
    return storage, study


def _objective(trial: Any, specs: dict[str, Any], turn: Any, log: Any) -> float:
    from pgkit.bench import run_one
    from pgkit.errors import Interrupted, Terminated

    cell = trial.user_attrs.get(CELL)
    turn.release()
    if cell is None:  # a new trial made past the queue, in a race: no run is left for it
        trial.set_user_attr(studies.SURPLUS, True)
        raise Surplus("no queued run left")
    spec = specs[cell]
    log(f"{spec.algorithm} {spec.env} seed {spec.seed}: started on {os.uname().nodename} (pid {os.getpid()})")
    try:
        record = run_one(spec)
    except Interrupted as exc:
        studies.retry(trial.study, trial)
        raise SweepStopped(exc.signum) from None
    except (KeyboardInterrupt, Terminated) as exc:
        studies.retry(trial.study, trial)
        raise SweepStopped(15 if isinstance(exc, Terminated) else 2) from None
    except Exception as exc:  # reported, and the suite goes on with the other runs
        message = f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:500]}"
        trial.set_user_attr("pgkit.error", message)
        log(f"{spec.algorithm} {spec.env} seed {spec.seed}: FAILED: {message}")
        raise TrialFailed(message) from None
    trial.set_user_attr(RECORD, record)
    log(f"{spec.algorithm} {spec.env} seed {spec.seed}: return {record['final_return']:.1f} (eval "
        f"{record['eval_return']:.1f}), {record['env_steps']} steps in {record['wall_s']:.0f} s")
    return float(record["eval_return"])


def work(url: str, suite_name: str, specs: list[Any], log: Any = print) -> int:
    """One worker: take queued runs until none is left and none runs anywhere. Returns 0, or ``128 + signum``."""
    import optuna

    os.environ.setdefault("TQDM_DISABLE", "1")
    by_name = {s.name: s for s in specs}
    _, study = open_suite_study(url, suite_name, list(by_name), log)
    while True:
        with store_lock(url) as turn:
            optuna.storages.fail_stale_trials(study)
            counts = studies.state_counts(study, 0)
            if not counts["waiting"]:
                turn.release()
                if not counts["running"]:
                    return 0
                time.sleep(2.0)
                continue
            try:
                study.optimize(lambda trial: _objective(trial, by_name, turn, log), n_trials=1,
                               catch=(TrialFailed, Surplus))
            except SweepStopped as exc:
                return 128 + exc.signum


def _worker_main(url: str, suite_name: str, specs: list[Any]) -> int:
    from pgkit.errors import Terminated

    try:
        return work(url, suite_name, specs)
    except KeyboardInterrupt:  # between runs: nothing to save
        return 130
    except Terminated:
        return 143


def run_shared(url: str, suite_name: str, specs: list[Any], workers: int, log: Any = print) -> int:
    """Queue (or join) the suite's runs and run them in ``workers`` processes of this machine."""
    names = [s.name for s in specs]
    open_suite_study(url, suite_name, names, log)  # created (and queued) once, before the workers start
    if workers == 1:
        return work(url, suite_name, specs, log)
    # Not daemonic (a Pool's are), so a run may start processes of its own (env.backend: split or async); a worker
    # that dies breaks the pool, which then says so instead of waiting for it forever.
    codes = []
    with futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(_worker_main, url, suite_name, specs) for _ in range(workers)]
        for job in jobs:
            try:
                codes.append(job.result())
            except KeyboardInterrupt:
                codes.append(130)
            except BrokenProcessPool:
                log(f"bench {suite_name}: a worker process died; its run is queued again once its heartbeats stop")
                codes.append(1)
    bad = [c for c in codes if c]
    return bad[0] if bad else 0


def shared_records(url: str, suite_name: str) -> list[dict[str, Any]]:
    """The results of every finished run of the suite in the storage, whichever machine ran it."""
    import optuna
    from optuna.trial import TrialState

    storage = studies.open_storage(url, 120.0)
    try:
        study = optuna.load_study(study_name=f"bench-{suite_name}", storage=storage)
    except KeyError:
        raise UserError(f"bench error: --storage: no study bench-{suite_name} in {studies.masked(url)}") from None
    return [t.user_attrs[RECORD] for t in studies.counted(study.get_trials(deepcopy=False))
            if t.state == TrialState.COMPLETE and RECORD in t.user_attrs]


def failed_cells(url: str, suite_name: str) -> list[str]:
    """The runs of the suite that failed (not stopped: those were queued again)."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=f"bench-{suite_name}", storage=studies.open_storage(url, 120.0))
    return [t.user_attrs[CELL] for t in studies.counted(study.get_trials(deepcopy=False))
            if t.state == TrialState.FAIL and CELL in t.user_attrs]


def run_suite_shared(suite_path: str | Path, storage: str, output: str | Path | None = None,
                     algorithms: str | None = None, envs: str | None = None, seeds: int | None = None,
                     workers: int | None = None, tracking_uri: str | None = None, log: Any = print,
                     report_only: bool = False) -> Any:
    """``pgkit bench --storage``: plan the suite as :func:`pgkit.bench.run_suite` does, run this machine's share of
    its runs (none with ``report_only``), and write the reports from every result in the storage."""
    from pgkit.bench import BenchSummary, plan_suite, prepare_tracking, write_reports

    suite, out, specs = plan_suite(suite_path, output, algorithms, envs, seeds, workers, tracking_uri)
    url = absolute_tracking_uri(storage)
    stopped = 0
    out.mkdir(parents=True, exist_ok=True)
    if not report_only:
        workers = min(workers or os.cpu_count() or 1, len(specs))
        log(f"bench {suite.name}: {len(specs)} runs shared through {studies.masked(url)}, {workers} workers here, "
            f"output {out}")
        prepare_tracking(specs)
        stopped = run_shared(url, suite.name, specs, workers, log)
    records = [r for r in shared_records(url, suite.name) if r["algorithm"] in suite.algorithms
               and r["env"] in suite.envs]
    write_reports(suite, records, out)
    log(f"wrote {out / 'results.csv'}, {out / 'results.md'} and learning curves from {len(records)} finished runs")
    return BenchSummary(ran=len(records), skipped=0, failed=failed_cells(url, suite.name), output=out,
                        stopped=stopped)


__all__ = ["failed_cells", "open_suite_study", "run_shared", "run_suite_shared", "shared_records", "work"]

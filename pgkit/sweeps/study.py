"""The Optuna study behind a sweep: its storage, sampler and pruner, and the accounting that makes the processes of
every machine together run exactly ``trials`` trials, none twice and none lost.

Optuna is the engine: trials are created by its storage (a row each, numbered in order, in one transaction), a
waiting trial is taken by one process only (``SELECT ... FOR UPDATE`` on PostgreSQL), and each running trial sends
heartbeats, so a trial whose process died (SIGKILL, a lost machine) is marked failed by the next process that looks
(``fail_stale_trials``). pgkit adds three things on top, all through Optuna's own records:

- **Retries.** A trial stopped by Ctrl-C, SIGTERM or a dead process is queued again with the same parameters
  (``enqueue_trial``), tagged ``pgkit.retry_of``; the retry continues the same trial folder from its last checkpoint.
  The stopped trial no longer counts.
- **The budget.** The trials that count are those neither replaced by a retry nor marked surplus. A process asks for
  a new trial only while fewer than ``trials`` count; a trial created in a race past the budget (two machines asking
  at the same instant) is marked ``pgkit.surplus`` and failed before it samples or trains anything.
- **One machine, sqlite.** sqlite has no row locks, so the processes of one machine take turns
  (:func:`pgkit.tracking.store_lock`, an ``flock`` beside the database) from the budget check to the new trial's
  first line.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
import warnings
import zlib
from typing import Any

from pgkit.errors import ConfigError, UserError
from pgkit.sweeps.config import SweepConfig
from pgkit.tracking import sqlite_path, store_lock

RETRY_OF = "pgkit.retry_of"
SURPLUS = "pgkit.surplus"
IDENTITY = "pgkit.identity"
#: The metric's last reported value, carried to a retry (one that resumes at the end trains no iteration).
LAST_VALUE = "pgkit.last_value"
#: Seconds between a running trial's heartbeats: well inside the shortest ``sweep.stale_after_s`` (10 s), so a live
#: trial is never judged lost.
HEARTBEAT_S = 3


def masked(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and MLflow tags)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str, stale_after_s: float) -> Any:
    """Optuna's ``RDBStorage`` with heartbeats, a failed-trial callback that queues a retry, and its schema made
    once. Raises :class:`ConfigError` (one line) when the database cannot be reached or its driver is missing."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # pgkit reports trials itself, in one line each
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    db = sqlite_path(url)
    if db is not None and not db.parent.is_dir():
        raise ConfigError(f"config error: sweep.storage: directory {str(db.parent)!r} does not exist (got {url!r})")
    engine_kwargs = {"connect_args": {"timeout": 60}} if db is not None else {"pool_pre_ping": True}
    last: BaseException | None = None
    for attempt in range(5):  # machines creating the schema of a new database at once: one wins, the others retry
        try:
            with store_lock(url):
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
                    grace_period=int(stale_after_s), heartbeat_stale_trial_callback=retry_stale_trial)
        except ImportError as exc:  # Optuna's "Failed to import DB access module", from the driver's import
            missing = getattr(exc.__cause__, "name", None) or "its driver"
            raise ConfigError(f"config error: sweep.storage: the database driver for {masked(url)} is not installed "
                              f"({missing}); for PostgreSQL: pip install -e \".[postgres]\" (got "
                              f"{masked(url)!r})") from None
        except (SQLAlchemyError, ValueError, OSError) as exc:
            last = exc
            time.sleep(0.5 * (attempt + 1))
    problem = " ".join(str(getattr(last, "orig", None) or last).split())[:300]
    raise ConfigError(f"config error: sweep.storage: cannot open {masked(url)}: {problem} (got {masked(url)!r})")


def _sampler(sweep: SweepConfig, seed: int) -> Any:
    import optuna

    from pgkit.sweeps.space import grid_space

    if sweep.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if sweep.sampler == "grid":
        return optuna.samplers.GridSampler(grid_space(sweep), seed=seed)
    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)


def _pruner(sweep: SweepConfig, total_steps: int) -> Any:
    import optuna

    if sweep.pruner == "median":
        # As RL Zoo: judge nothing before 5 trials have finished.
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=int(total_steps * sweep.prune_warmup))
    if sweep.pruner == "hyperband":
        # Three brackets: a ninth, a third and all of the run (Optuna's "auto" needs both ends automatic).
        return optuna.pruners.HyperbandPruner(min_resource=max(1, total_steps // 9), max_resource=total_steps,
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


def reseed(study: Any, sweep: SweepConfig, seed: int, *salt: Any) -> None:
    """Give the study a sampler seeded by ``seed`` and ``salt``. Processes whose samplers were seeded alike would
    sample the same values: before each trial is created the salt is the process and how far the study is (for
    the samplers that choose then: grid, CMA-ES); once it exists, its number, unique over every process (TPE and
    random sample then), so a TPE or random sweep run by one process is reproducible from its seed. The grid
    sampler is the exception: it needs the same seed everywhere (its order is shuffled by it)."""
    if sweep.sampler == "grid":  # Optuna's grid is shuffled by its seed: every process must share one order
        study.sampler = _sampler(sweep, seed)
        return
    study.sampler = _sampler(sweep, zlib.crc32(repr((seed, *salt)).encode()))


def open_study(storage: Any, name: str, sweep: SweepConfig, seed: int, total_steps: int,
               fingerprint: dict[str, Any], create: bool) -> Any:
    """Create the study (``create``: this process sets it up) or join it. A study set up from another config is
    refused with exit 2: its trials would mean something else."""
    import optuna

    direction = sweep.direction
    sampler, pruner = _sampler(sweep, seed), _pruner(sweep, total_steps)  # reseeded before each trial
    study = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    if study.direction.name.lower() != direction:  # Optuna loads an existing study with its own direction
        raise ConfigError(f"config error: sweep.direction: study {name!r} in {masked(storage.url)} is to "
                          f"{study.direction.name.lower()} (got {direction!r})")
    if create and "pgkit.fingerprint" not in study.user_attrs:
        study.set_user_attr("pgkit.fingerprint", fingerprint)
        study.set_user_attr("pgkit.uid", uuid.uuid4().hex)  # sqlite reuses a deleted study's id; this is new
    stored = study.user_attrs.get("pgkit.fingerprint")
    if stored is not None and stored != fingerprint:
        keys = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
        raise ConfigError(f"config error: sweep.study: study {name!r} in {masked(storage.url)} was started from "
                          f"another config (it differs in {', '.join(keys)}); name another sweep.study "
                          f"(got {name!r})")
    return study


def counted(trials: list[Any]) -> list[Any]:
    """The trials that count toward the budget: neither replaced by a retry nor surplus."""
    replaced = {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}
    return [t for t in trials if t.number not in replaced and not t.user_attrs.get(SURPLUS)]


def identity(trial: Any) -> int:
    """The trial number that names a trial's folder and MLflow run: a retry keeps its first attempt's."""
    return int(trial.user_attrs.get(IDENTITY, trial.number))


def retry(study: Any, trial: Any) -> None:
    """Queue ``trial`` again with its parameters; the retry continues its folder (and checkpoint)."""
    if trial.user_attrs.get(SURPLUS):
        return
    cell = "pgkit.cell" in trial.user_attrs  # a shared benchmark's run
    if not trial.params and not cell:
        return  # stopped before it chose its values: nothing trained, and a grid point cannot be named again
    if any(t.user_attrs.get(RETRY_OF) == trial.number for t in study.get_trials(deepcopy=False)):
        return  # queued already (a stop, then its process killed before Optuna recorded the stop)
    keep = {k: v for k, v in trial.user_attrs.items() if k in ("pgkit.cell", LAST_VALUE)}
    study.enqueue_trial(dict(trial.params), user_attrs={**keep, RETRY_OF: trial.number, IDENTITY: identity(trial)})


def retry_stale_trial(study: Any, trial: Any) -> None:
    """Optuna's stale-trial callback: a trial whose process stopped sending heartbeats is queued again."""
    retry(study, trial)
    logging.getLogger("pgkit.sweep").warning("trial %d lost its process; queued again", identity(trial))


def state_counts(study: Any, budget: int) -> dict[str, int]:
    """``{"counted", "waiting", "running", "done"}`` for the budget decisions."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    live = counted(trials)
    return {
        "counted": len(live),
        "waiting": sum(t.state == TrialState.WAITING for t in trials),
        "running": sum(t.state == TrialState.RUNNING for t in live),
        "done": sum(t.state.is_finished() for t in live),
        "budget": budget,
    }


def is_surplus(study: Any, trial: Any, budget: int) -> bool:
    """Whether a new (not retried) trial was created past the budget, in a race with another process."""
    if RETRY_OF in trial.user_attrs:
        return False
    earlier = [t for t in counted(study.get_trials(deepcopy=False)) if t.number < trial.number]
    return len(earlier) >= budget


def check_folder(sweep_dir: Any, study: Any, name: str, storage_url: str) -> None:
    """Claim the sweep folder for this study (a marker file), or refuse one that another study's trials fill."""
    import json
    from pathlib import Path

    folder = Path(sweep_dir)
    marker = folder / ".pgkit-sweep.json"
    # The study's own mark (made with it): a study deleted and made again under the same name has another.
    mine = {"study": name, "uid": study.user_attrs.get("pgkit.uid")}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if marker.exists():
            theirs = json.loads(marker.read_text())
            if theirs.get("uid") != mine["uid"]:
                raise UserError(f"pgkit sweep: {folder} holds the trials of another study ({theirs.get('study')!r}, "
                                f"deleted or elsewhere); set trainer.output_dir to another folder")
            return
        if any(folder.glob("trial-*")):
            raise UserError(f"pgkit sweep: {folder} holds trial folders of another sweep; set trainer.output_dir "
                            "to another folder")
        tmp = folder / f".pgkit-sweep.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({**mine, "storage": masked(storage_url)}))
        tmp.replace(marker)
    except OSError as exc:
        raise UserError(f"pgkit sweep: cannot write to {folder}: {exc.strerror or exc}") from None

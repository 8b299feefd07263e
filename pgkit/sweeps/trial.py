"""One trial of a sweep: its config, its run (an ordinary pgkit run in its own folder, a nested MLflow run under
the sweep's), the metric reported to Optuna at each logging, and what becomes of the trial when the run is
pruned, fails or is stopped."""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Checkpoint

from pgkit.errors import ConfigError, Interrupted, Terminated
from pgkit.sweeps import study as studies
from pgkit.sweeps.space import suggest, with_values


class TrialFailed(Exception):
    """A trial whose config was refused or whose run failed: Optuna records it as failed; the sweep goes on."""


class Surplus(Exception):
    """A trial created past the budget in a race with another process: failed at once, before anything runs."""


class SweepStopped(Exception):
    """Ctrl-C or SIGTERM during a trial: the trial was queued again, and the sweep stops (exit ``128 + signum``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class Reporter(Checkpoint):
    """Reports the sweep's metric to the Optuna trial each time an iteration logs it (at the run's env-step count)
    and stops the run when the pruner says so. A ``Checkpoint`` subclass, so Lightning calls it after the module's
    own epoch end, when the iteration's metrics and evaluation are known."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.value: float | None = None
        self.pruned = False
        self.taken_over = False
        self.seen: set[str] = set()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        metrics = getattr(pl_module, "last_metrics", {})
        self.seen.update(metrics)
        if self.metric not in metrics:
            return
        self.value = float(metrics[self.metric])
        if not math.isfinite(self.value):
            return
        try:
            self.trial.report(self.value, int(pl_module.env_steps))
            self.trial.set_user_attr(studies.LAST_VALUE, self.value)
            prune = not trainer.should_stop and self.trial.should_prune()
        except UpdateFinishedTrialError:  # judged lost (no heartbeat for stale_after_s) and queued elsewhere
            self.taken_over, prune = True, True
        if prune:
            self.pruned = not self.taken_over
            trainer.should_stop = True


@dataclass
class SweepContext:
    """What every trial of one process needs."""

    name: str
    sweep: Any
    budget: int
    base: dict[str, Any]
    sweep_dir: Path
    parent_run_id: str | None
    log: Any
    seed: int = 0
    turn: Any = None
    metric_missing: str | None = field(default=None)


def trial_dir(ctx: SweepContext, number: int) -> Path:
    """``<sweep folder>/trial-0007``."""
    return ctx.sweep_dir / f"trial-{number:04d}"


def trial_data(ctx: SweepContext, values: dict[str, Any], number: int) -> dict[str, Any]:
    """The trial's config: the base with the sampled values, its own folder, and its MLflow run nested under the
    sweep's."""
    data = with_values(ctx.base, values)
    data["trainer"]["output_dir"] = str(trial_dir(ctx, number))
    logger = data.setdefault("logger", {})
    logger["run_name"] = f"{ctx.name}-trial-{number:04d}"
    tags = dict(logger.get("tags") or {})
    tags.update({"pgkit.sweep.study": ctx.name, "pgkit.sweep.trial": str(number)})
    if ctx.parent_run_id:
        tags["mlflow.parentRunId"] = ctx.parent_run_id  # MLflow's own mark of a nested run
    logger["tags"] = tags
    return data


def _describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{path.rsplit('.', 1)[-1]}={value:.4g}" if isinstance(value, float) else
                     f"{path.rsplit('.', 1)[-1]}={value}" for path, value in values.items())


def objective(ctx: SweepContext, trial: Any) -> float:
    """Run one trial (Optuna's objective): its value, ``TrialPruned``, or an exception Optuna records as a failure.
    A signal at any point of it queues the trial again and stops the sweep (:class:`SweepStopped`)."""
    if ctx.turn is not None:
        surplus = studies.is_surplus(trial.study, trial, ctx.budget)
        ctx.turn.release()  # the next process may ask for its trial now
        if surplus:
            trial.set_user_attr(studies.SURPLUS, True)
            raise Surplus(f"trial {trial.number} was created past the budget of {ctx.budget}")
    if ctx.sweep.sampler in ("tpe", "random"):
        studies.reseed(trial.study, ctx.sweep, ctx.seed, trial.number)
    try:
        return _run(ctx, trial)
    except Interrupted as exc:
        _stopped(ctx, trial, exc.signum)
    except (KeyboardInterrupt, Terminated) as exc:  # outside training: choosing values, checking, tagging
        _stopped(ctx, trial, signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    raise AssertionError("unreachable")


def _run(ctx: SweepContext, trial: Any) -> float:
    import optuna

    from pgkit.api import preserved_process_state
    from pgkit.config_loading import parse_config
    from pgkit.training import fit

    number = studies.identity(trial)
    trial.set_user_attr(studies.IDENTITY, number)
    values = suggest(trial, ctx.sweep)
    retried = studies.RETRY_OF in trial.user_attrs
    label = f"trial {number}" + (f" (retry {trial.number})" if retried else "")
    try:
        cfg = parse_config(trial_data(ctx, values, number))
    except ConfigError as exc:
        trial.set_user_attr("pgkit.error", str(exc))
        ctx.log(f"{label}: {_describe(values)}: refused: {exc}")
        raise TrialFailed(str(exc)) from None
    last = Path(cfg.trainer.output_dir) / "checkpoints" / "last.ckpt"
    resume = last if last.exists() and retried else None
    ctx.log(f"{label}: {_describe(values)}" + (f" (continuing {last})" if resume else ""))
    reporter = Reporter(trial, ctx.sweep.metric)
    started = time.perf_counter()
    try:
        with preserved_process_state():
            result = fit(cfg, resume=resume, callbacks=[reporter])
    except (Interrupted, KeyboardInterrupt, Terminated):
        raise
    except Exception as exc:  # a refused resume, a diverged run, a failing env: recorded, and the sweep goes on
        message = " ".join(str(exc).split())[:500] or exc.__class__.__name__
        trial.set_user_attr("pgkit.error", message)
        ctx.log(f"{label}: failed: {message}")
        raise TrialFailed(message) from None
    seconds = time.perf_counter() - started
    if reporter.taken_over:
        ctx.log(f"{label}: another process took this trial over (it missed its heartbeats); leaving it to that one")
        raise TrialFailed("taken over")
    _tag_run(cfg, result.mlflow_run_id, "PRUNED" if reporter.pruned else "COMPLETE")
    value = reporter.value if reporter.value is not None else trial.user_attrs.get(studies.LAST_VALUE)
    if value is None:
        seen = ", ".join(sorted(reporter.seen)[:12])
        ctx.metric_missing = (f"config error: sweep.metric: the run never logged {ctx.sweep.metric!r}; it logs: "
                              f"{seen} (got {ctx.sweep.metric!r})")
        trial.set_user_attr("pgkit.error", ctx.metric_missing)
        if retried:  # a retry that resumed at its end trains nothing: not the metric's fault
            ctx.metric_missing = None
        raise TrialFailed(ctx.metric_missing or "no value")
    if reporter.pruned:
        ctx.log(f"{label}: pruned at {result.env_steps} steps ({ctx.sweep.metric} {value:.4g}, {seconds:.0f} s)")
        raise optuna.TrialPruned()
    if not math.isfinite(value):
        trial.set_user_attr("pgkit.error", f"{ctx.sweep.metric} is {value}")
        raise TrialFailed(f"{ctx.sweep.metric} is {value}")
    ctx.log(f"{label}: {ctx.sweep.metric} {value:.4g} ({seconds:.0f} s)")
    return value


def _stopped(ctx: SweepContext, trial: Any, signum: int) -> None:
    """A signal stopped the trial (its run saved its iteration first): queue it again, then stop the sweep."""
    label = f"trial {studies.identity(trial)}"
    trial.set_user_attr("pgkit.stopped_by", signal.Signals(signum).name)
    studies.retry(trial.study, trial)
    ctx.log(f"{label}: stopped by {signal.Signals(signum).name}; it continues from its checkpoint when the sweep "
            "runs again")
    raise SweepStopped(signum) from None


def _tag_run(cfg: Any, run_id: str | None, state: str) -> None:
    """Mark the trial's MLflow run with how the trial ended (best effort: the store may be away)."""
    if not run_id:
        return
    try:
        from mlflow import MlflowClient

        MlflowClient(cfg.logger.tracking_uri).set_tag(run_id, "pgkit.sweep.state", state)
    except Exception:  # a tag is not worth failing a finished trial for
        pass


__all__ = ["Reporter", "Surplus", "SweepContext", "SweepStopped", "TrialFailed", "objective"]

"""A sweep's results: the summary table (terminal and MLflow), ``best.yaml``, Optuna's plots, and the parent
MLflow run that every trial's run is nested under."""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from pgkit.sweeps import study as studies


def _attr_key(tracking_uri: str, experiment: str) -> str:
    digest = hashlib.sha256(f"{tracking_uri}\n{experiment}".encode()).hexdigest()[:16]
    return f"pgkit.mlflow_parent.{digest}"


def parent_run(study: Any, cfg: Any, name: str, storage_url: str) -> str | None:
    """The sweep's MLflow run in this machine's tracking store: found through the study (so every process and
    every later invocation uses one), or made now. None when tracking is off."""
    if not cfg.logger.enabled:
        return None
    from mlflow import MlflowClient

    from pgkit.tracking import retry_busy, store_lock

    uri, experiment = cfg.logger.tracking_uri, cfg.logger.experiment_name
    key = _attr_key(uri, experiment)
    with store_lock(uri):
        client = MlflowClient(uri)
        existing = study.user_attrs.get(key)
        if existing:
            try:
                run = client.get_run(existing)
                if run.info.lifecycle_stage == "active":
                    if run.info.status != "RUNNING":
                        client.update_run(existing, status="RUNNING")
                    return existing
            except Exception:  # deleted, or another store's run: make a new one
                pass
        found = retry_busy(client.get_experiment_by_name, experiment)
        experiment_id = found.experiment_id if found else retry_busy(client.create_experiment, experiment)
        sweep = cfg.sweep
        run = client.create_run(experiment_id, run_name=f"sweep-{name}", tags={
            "pgkit.sweep.study": name, "pgkit.sweep.storage": studies.masked(storage_url),
            "pgkit.algorithm": cfg.algorithm.name, "pgkit.env": str(getattr(cfg.env, "id", "text"))})
        run_id = run.info.run_id
        params = {"sweep.metric": sweep.metric, "sweep.direction": sweep.direction, "sweep.sampler": sweep.sampler,
                  "sweep.pruner": sweep.pruner}
        params.update({f"sweep.params.{path}": json.dumps(space.model_dump(exclude_none=True))[:500]
                       for path, space in sweep.params.items()})
        from mlflow.entities import Param

        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    study.set_user_attr(key, run_id)
    time.sleep(0.5)  # two machines that made a parent at the same instant: the last one written is the parent
    winner = study.user_attrs.get(key)
    if winner != run_id:
        MlflowClient(uri).delete_run(run_id)
    return winner


def rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial that counts (retried attempts and surplus records left out), in trial-number order."""
    out = []
    for t in sorted(studies.counted(study.get_trials(deepcopy=False)), key=studies.identity):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and \
            t.datetime_start else None
        params = t.params or t.system_attrs.get("fixed_params", {})  # a queued retry has its values fixed
        out.append({"trial": studies.identity(t), "state": t.state.name, "value": t.value, "seconds": seconds,
                    **params, "error": t.user_attrs.get("pgkit.error", "")})
    return out


def table(study: Any, params: list[str]) -> str:
    """The summary as a Markdown table: trial, each parameter, value and state."""
    header = ["trial", *[p.rsplit(".", 1)[-1] for p in params], "value", "state"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows(study):
        cells = [str(row["trial"])]
        for p in params:
            value = row.get(p, "")
            cells.append(f"{value:.4g}" if isinstance(value, float) else str(value))
        value = row["value"]
        cells.append(f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else "")
        cells.append(row["state"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_trial(study: Any) -> Any | None:
    """The best finished trial (None before any)."""
    from optuna.trial import TrialState

    done = [t for t in studies.counted(study.get_trials(deepcopy=False)) if t.state == TrialState.COMPLETE]
    if not done:
        return None
    pick = max if study.direction.name == "MAXIMIZE" else min
    return pick(done, key=lambda t: t.value)


def write_best(study: Any, cfg: Any, ctx: Any, path: Path) -> Any | None:
    """``best.yaml``: the best trial's whole config, runnable with ``pgkit fit --config best.yaml`` (it trains in
    the default folder, not in the trial's)."""
    from pgkit.sweeps.space import suggest
    from pgkit.sweeps.trial import trial_data

    best = best_trial(study)
    if best is None:
        return None
    from optuna.trial import FixedTrial

    values = suggest(FixedTrial(best.params), cfg.sweep)
    data = trial_data(ctx, values, studies.identity(best))
    data["trainer"].pop("output_dir", None)
    data["logger"]["run_name"] = None
    data["logger"]["tags"] = {k: v for k, v in data["logger"]["tags"].items()
                              if not k.startswith(("pgkit.sweep.", "mlflow."))}
    head = (f"# The best trial of study {ctx.name!r}: trial {studies.identity(best)}, {cfg.sweep.metric} "
            f"{best.value:.6g}.\n# Its values: " + json.dumps(values) + "\n# Train it: pgkit fit --config "
            f"{path}\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(head + yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)
    return best


def plots(study: Any, folder: Path) -> list[Path]:
    """Optuna's optimization history and parameter importances as PNGs, when the study is big enough for them
    (importances need two finished trials that differ)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as optuna_plots

    made = []
    for name, draw in (("optimization_history", lambda: optuna_plots.plot_optimization_history(study)),
                       ("param_importances", lambda: optuna_plots.plot_param_importances(
                           study, evaluator=PedAnovaImportanceEvaluator()))):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw()
            path = folder / f"{name}.png"
            ax.figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(ax.figure)
            made.append(path)
        except Exception:  # too few finished trials (or no spread) for this plot yet
            plt.close("all")
    return made


def publish(study: Any, cfg: Any, ctx: Any, log: Any, finished: bool) -> None:
    """Summary to the terminal and the sweep folder, ``best.yaml``, the plots, and all of it to the parent MLflow
    run (marked finished once the study's budget is done)."""
    params = list(cfg.sweep.params)
    text = table(study, params)
    counts = studies.state_counts(study, ctx.budget)
    log(f"study {ctx.name!r}: {counts['done']} of {ctx.budget} trials finished"
        + (f", {counts['running']} running" if counts["running"] else "") + "\n" + text)
    ctx.sweep_dir.mkdir(parents=True, exist_ok=True)
    (ctx.sweep_dir / "summary.md").write_text(text + "\n")
    best = write_best(study, cfg, ctx, ctx.sweep_dir / "best.yaml")
    if best is not None:
        log(f"best: trial {studies.identity(best)}, {cfg.sweep.metric} {best.value:.6g}; its config: "
            f"{ctx.sweep_dir / 'best.yaml'}")
    images = plots(study, ctx.sweep_dir)
    if ctx.parent_run_id is None:
        return
    from pgkit.mlflow_model import quiet_mlflow

    try:
        with quiet_mlflow():
            _log_parent(cfg, ctx, study, best, images, finished)
    except Exception as exc:  # the files are written; the store may be away
        log(f"pgkit sweep: could not update MLflow run {ctx.parent_run_id}: {' '.join(str(exc).split())[:200]}")


def _log_parent(cfg: Any, ctx: Any, study: Any, best: Any, images: list[Path], finished: bool) -> None:
    import pandas as pd
    from mlflow import MlflowClient

    client = MlflowClient(cfg.logger.tracking_uri)
    run_id = ctx.parent_run_id
    frame = pd.DataFrame(rows(study))
    client.log_table(run_id, data=frame, artifact_file="sweep/trials.json")
    client.log_artifact(run_id, str(ctx.sweep_dir / "summary.md"), "sweep")
    if best is not None:
        client.log_artifact(run_id, str(ctx.sweep_dir / "best.yaml"), "sweep")
        client.log_metric(run_id, "sweep/best_value", float(best.value))
        client.set_tag(run_id, "pgkit.sweep.best_trial", str(studies.identity(best)))
    counts = studies.state_counts(study, ctx.budget)
    client.log_metric(run_id, "sweep/finished_trials", counts["done"])
    for image in images:
        client.log_artifact(run_id, str(image), "sweep")
    client.set_terminated(run_id, "FINISHED" if finished else "KILLED")

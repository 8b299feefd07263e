"""Wiring a config to Lightning: the module, the MLflow logger, checkpoint callbacks and the Trainer."""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from pgkit.callbacks import (
    BestCheckpoint,
    EnvStepProgressBar,
    LastCheckpoint,
    MLflowArtifacts,
    StopOnSignal,
    SystemMetrics,
)
from pgkit.checkpoints import LoadedCheckpoint, check_resume_fits, load_checkpoint, load_weights
from pgkit.config import ExperimentConfig
from pgkit.errors import Interrupted
from pgkit.outputs import continues_in_place, release_all, resolve_output_dir
from pgkit.start_check import reporting_start_failures, wait_for_all_ranks
from pgkit.tracking import (
    Logger,
    absolute_tracking_uri,
    check_tracking_uri,
    open_logger,
    tracking_settings,
)
from pgkit.trust import user_key


@dataclass(frozen=True)
class FitResult:
    """Where a finished run left its outputs."""

    output_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    mlflow_run_id: str | None
    env_steps: int
    episode_returns: list[float]
    """Returns of every training episode this process finished, in order."""
    rank: int
    """This process's global rank (0 without DDP); only rank 0 logs and checkpoints."""
    episode_steps: list[int]
    """For each of ``episode_returns``, the env-step count at the end of the iteration in which it finished."""
    episode_seconds: list[float]
    """For each of ``episode_returns``, the wall-clock seconds from the call to ``fit`` (building the envs, the module
    and the Trainer included) to the end of the rollout in which it finished: returns against time, as SB3's
    ``Monitor`` records them."""


def quiet_lightning() -> None:
    """Silence Lightning's start-up banners and warnings that do not apply to on-policy RL."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)
    for pattern in (
        ".*does not have many workers.*",  # indices come from the main process by design
        ".*IterableDataset.*__len__.*",
        ".*could not find the monitored key.*",  # eval/mean_return exists only on evaluation iterations
        ".*`training_step` returned `None`.*",  # deliberate: a target-KL stop skips that minibatch's step
        ".*Checkpoint directory .* exists and is not empty.*",
        ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",  # Lightning 2.6 with torch 2.13, harmless
        ".*sync_dist=True.*",  # eval/mean_return is the same on every rank (same policy, same eval seeds)
        ".*torch.distributed.nn.functional.all_gather is deprecated.*",  # inside Lightning's all_gather
        ".*module\\(s\\) in eval mode at the start of training.*",  # frozen reference policies, deliberately
        ".*is_gradient_checkpointing` is deprecated.*",  # peft asks transformers 5 the old name
        ".*The dirpath has changed from.*",  # a resume that branches into a new folder starts its own best.ckpt
    ):
        warnings.filterwarnings("ignore", pattern)


def process_rank(devices_per_node: int, num_nodes: int = 1) -> int:
    """This process's global rank, from the launcher's environment, before Lightning sets anything up: torchrun's
    ``RANK``, or Lightning's own launcher (``NODE_RANK`` and ``LOCAL_RANK``), then SLURM's and MPI's. 0 for a
    run of one process, whatever the environment says (``srun -n 4`` starting four independent runs)."""
    if devices_per_node * num_nodes <= 1:
        return 0
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "LOCAL_RANK" in os.environ or "NODE_RANK" in os.environ:  # a node's first process has no LOCAL_RANK yet
        return int(os.environ.get("NODE_RANK", 0)) * devices_per_node + int(os.environ.get("LOCAL_RANK", 0))
    for var in ("SLURM_PROCID", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def _run_name(cfg: ExperimentConfig) -> str:
    """The default MLflow run name: ``<name>-<env>-s<seed>``, with the output folder's version (``-v2``) when the
    run took a versioned folder, so the run and its folder share a name."""
    folder = Path(cfg.trainer.output_dir).name
    base = cfg.default_run_name
    return folder if folder.startswith(f"{base}-v") and folder[len(base) + 2 :].isdigit() else base


def make_logger(cfg: ExperimentConfig, run_id: str | None) -> Logger | None:
    """The MLflow logger, continuing ``run_id`` when resuming in place (:mod:`pgkit.tracking`)."""
    if not cfg.logger.enabled:
        return None
    check_tracking_uri(cfg.logger.tracking_uri)
    tags = {"pgkit.algorithm": cfg.algorithm.name, "pgkit.env": cfg.env.id, "pgkit.seed": str(cfg.trainer.seed),
            **cfg.logger.tags}
    return open_logger(cfg.logger.tracking_uri, cfg.logger.experiment_name, cfg.logger.run_name or _run_name(cfg),
                       run_id, tags)


def fit(cfg: ExperimentConfig, resume: str | Path | None = None,
        loaded: LoadedCheckpoint | None = None, callbacks: list[L.Callback] | None = None) -> FitResult:
    """Train ``cfg`` to completion (or continue the run saved in ``resume``; ``loaded`` is that checkpoint when the
    caller has read it already), with the user's Lightning ``callbacks`` after pgkit's own (see
    :func:`pgkit.api.fit` for when they see an iteration's metrics).

    A new run never writes over an earlier run's checkpoints, and two runs never share a folder
    (:func:`pgkit.outputs.resolve_output_dir`): the returned :class:`FitResult` says which folder it used.
    Everything that can be checked is checked before an MLflow run is opened: the output folder, the tracking URI,
    and that ``resume`` fits the config. A resume from its folder's ``last.ckpt`` continues the same MLflow run;
    one from any other checkpoint branches into a new folder and a new MLflow run.
    """
    called = time.perf_counter()
    cfg = with_absolute_store(cfg)
    with tracking_settings():
        try:
            # Across processes, a rank whose checks fail stops the others at once (pgkit.start_check).
            with reporting_start_failures(*_rank_and_world(cfg)):
                cfg, module, trainer, own, logger, best = _setup(cfg, resume, loaded, list(callbacks or []))
            return _train(cfg, module, trainer, own, logger, best, resume, called)
        finally:
            release_all()


def _rank_and_world(cfg: Any) -> tuple[int, int]:
    world = cfg.trainer.devices * cfg.trainer.num_nodes
    return process_rank(cfg.trainer.devices, cfg.trainer.num_nodes), world


def with_absolute_store(cfg: Any) -> Any:
    """``cfg`` with a relative sqlite tracking URI made absolute, so the checkpoint names the store it used."""
    uri = absolute_tracking_uri(cfg.logger.tracking_uri)
    if uri == cfg.logger.tracking_uri:
        return cfg
    return cfg.model_copy(update={"logger": cfg.logger.model_copy(update={"tracking_uri": uri})})


def _train(cfg: Any, module: Any, trainer: L.Trainer, callbacks: list, logger: Logger | None, best: Any,
           resume: str | Path | None, called: float) -> FitResult:
    output_dir = Path(cfg.trainer.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    stop = next(c for c in callbacks if isinstance(c, StopOnSignal))
    stop.install()  # from here a signal ends the run after an iteration, its checkpoint and a KILLED MLflow run
    try:
        if logger is not None:  # the MLflow run; a failure to open it is this rank's start failure
            with reporting_start_failures(*_rank_and_world(cfg)):
                continued = logger._run_id is not None
                logger.start(output_dir)
            if resume is not None and not continued:  # a branch: a new MLflow run that says where it came from
                logger.experiment.set_tag(logger.run_id, "pgkit.resumed_from", str(Path(resume).resolve()))
        try:
            wait_for_all_ranks(cfg.trainer.start_timeout, *_rank_and_world(cfg), cfg.trainer.devices)
        except BaseException:
            if logger is not None and not continued:
                logger.discard()  # another rank failed to start: this run never began, so no MLflow run is left
            raise
        trainer.fit(module, ckpt_path=str(resume) if resume else None, weights_only=True)
    except SystemExit:  # Lightning's exit after a second Ctrl-C, raised once the iteration was abandoned
        if stop.signum is None:
            raise
    finally:
        stop.restore()
        if logger is not None and getattr(logger, "resilient", None) is not None:
            if stop.signum is not None and logger.run_id is not None:
                logger.experiment.set_terminated(logger.run_id, "KILLED")
            logger.resilient.finish(output_dir)
    if stop.signum is not None:
        raise Interrupted(stop.signum, str(checkpoint_dir / "last.ckpt"))
    best_path = checkpoint_dir / "best.ckpt"
    return FitResult(
        output_dir=output_dir,
        last_checkpoint=checkpoint_dir / "last.ckpt",
        best_checkpoint=best_path if best is not None and best_path.exists() else None,
        mlflow_run_id=logger.run_id if logger is not None else None,
        env_steps=int(module.env_steps),
        episode_returns=list(module.episode_returns),
        episode_steps=list(module.episode_steps),
        episode_seconds=[t - called for t in module.episode_times],
        rank=trainer.global_rank,
    )


def _setup(cfg: ExperimentConfig, resume: str | Path | None, loaded: LoadedCheckpoint | None,
           extra: list[L.Callback]):
    """Everything before training, checks first: the config with its output folder resolved, the module, the
    Trainer, its callbacks, the MLflow logger (rank 0) and the best-checkpoint callback (or None)."""
    quiet_lightning()
    user_key()  # a missing key is made now, and a bad one refused now (exit 2), not at the first checkpoint
    if resume and loaded is None:
        loaded = load_checkpoint(resume)
    if loaded is not None:
        check_resume_fits(loaded, cfg.model_dump(mode="json"))
    if cfg.logger.enabled:
        check_tracking_uri(cfg.logger.tracking_uri)  # a bad tracking URI fails in seconds, before anything is made
    cfg = resolve_output_dir(cfg, resume, process_rank(cfg.trainer.devices, cfg.trainer.num_nodes) == 0)
    if cfg.trainer.torch_threads:
        torch.set_num_threads(cfg.trainer.torch_threads)
    L.seed_everything(cfg.trainer.seed, workers=False, verbose=False)

    output_dir = Path(cfg.trainer.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    module = cfg.init()
    if loaded is not None:  # fail as bad input before training, not deep inside Lightning's restore
        load_weights(module, loaded)
        module.resume_env_states = loaded.env_states
    # The same MLflow run only when the run continues in its own folder; a branch (best.ckpt, a copy) is a new run.
    run_id = loaded.mlflow_run_id if loaded is not None and continues_in_place(cfg, resume) else None
    # Only global rank 0 opens the tracking store: two ranks creating a fresh sqlite schema at once collide, and
    # every metric is rank 0's to log anyway (Lightning's own loggers are rank-zero-only).
    rank_zero = process_rank(cfg.trainer.devices, cfg.trainer.num_nodes) == 0
    logger = make_logger(cfg, run_id) if rank_zero else None
    callbacks: list[L.Callback] = [
        StopOnSignal(),
        EnvStepProgressBar(),
        LastCheckpoint(checkpoint_dir / "last.ckpt", cfg.checkpoint.every_n_iterations),
    ]
    best = None
    if cfg.checkpoint.save_best and cfg.eval.every_n_iterations:
        best = BestCheckpoint(
            dirpath=checkpoint_dir,
            filename="best",
            monitor="eval/mean_return",
            mode="max",
            save_top_k=1,
            save_on_train_epoch_end=True,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )
        callbacks.append(best)
    if logger is not None:
        callbacks.append(
            MLflowArtifacts(logger, cfg.model_dump(mode="json"), checkpoint_dir, resumed=run_id is not None)
        )
        if cfg.logger.system_metrics:
            callbacks.append(SystemMetrics(logger, cfg.logger.tracking_uri, cfg.logger.system_metrics_interval,
                                           resumed=run_id is not None))

    callbacks.extend(extra)
    trainer = L.Trainer(
        max_epochs=module.max_iterations,
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes,
        strategy=cfg.trainer.strategy,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        # Manual-optimisation algorithms (TRPO) clip their own gradients; Lightning refuses the option for them.
        gradient_clip_val=cfg.algorithm.max_grad_norm if module.automatic_optimization else None,
        gradient_clip_algorithm="norm",
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=1,
        default_root_dir=output_dir,
        use_distributed_sampler=False,
    )
    return cfg, module, trainer, callbacks, logger, best

"""Lightning callbacks: a progress bar in environment steps, MLflow artifacts, checkpoints and signals."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import yaml
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import MLFlowLogger
from tqdm.auto import tqdm

from pgkit.algorithms.base import OnPolicyModule
from pgkit.errors import Interruption, TrainingError


class EnvStepProgressBar(ProgressBar):
    """Replaces Lightning's per-batch bar with one over environment steps, showing recent return and SPS."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self.bar: tqdm | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: OnPolicyModule) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        total = pl_module.step_budget
        self.bar = tqdm(
            total=total,
            initial=int(pl_module.env_steps),
            unit="step",
            unit_scale=True,
            dynamic_ncols=True,
            desc=pl_module.cfg.label,
            # Read now, not when tqdm was imported: a sweep's forked workers turn their bars off after that.
            disable=os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true"),
        )

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: OnPolicyModule, batch, batch_idx: int) -> None:
        # Callbacks run before the module's own epoch hooks, so the first batch is the first moment at which this
        # iteration's rollout (steps, returns, SPS) is known.
        if batch_idx == 0:
            self.refresh(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: OnPolicyModule) -> None:
        if self.bar is not None:
            self.refresh(pl_module, force=True)
            self.bar.close()
            self.bar = None

    def refresh(self, pl_module: OnPolicyModule, force: bool = False) -> None:
        """Show the module's current step count, recent return, SPS and last evaluation.

        ``update`` respects tqdm's ``mininterval``, so iterations of a few steps (A2C) do not redraw every time.
        """
        if self.bar is None:
            return
        postfix = {"sps": f"{pl_module.rollout_metrics.get('time/sps', 0.0):.0f}"}
        if pl_module.episode_returns:
            postfix["return"] = f"{np.mean(pl_module.episode_returns[-100:]):.1f}"
        if "eval/mean_return" in pl_module.last_metrics:
            postfix["eval"] = f"{pl_module.last_metrics['eval/mean_return']:.1f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(int(pl_module.env_steps) - self.bar.n)
        if force:
            self.bar.refresh()


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; MLflow caps values at 250 characters, so nested dicts are split."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class MLflowArtifacts(L.Callback):
    """Logs the resolved config (params and YAML) at the start; the last checkpoint, the policy as an MLflow model
    (:mod:`pgkit.mlflow_model`) and a learning curve at the end.

    Lightning's ``log_model=True`` is broken on MLflow 3, hence logging the checkpoint file ourselves.
    """

    def __init__(self, logger: MLFlowLogger, config: dict, checkpoint_dir: Path, resumed: bool) -> None:
        self.logger, self.config, self.checkpoint_dir, self.resumed = logger, config, checkpoint_dir, resumed

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if not self.resumed:  # MLflow refuses to change a logged param, and a resumed run already has them
            self.logger.log_hyperparams(flatten(self.config))
        self.logger.experiment.log_text(self.logger.run_id, yaml.safe_dump(self.config, sort_keys=False), "config.yaml")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        client, run_id = self.logger.experiment, self.logger.run_id
        last = self.checkpoint_dir / "last.ckpt"
        logger_cfg = self.config.get("logger", {})
        # One copy of the checkpoint in MLflow: inside the policy model when it can be served, else on its own.
        served = isinstance(pl_module, OnPolicyModule) and logger_cfg.get("log_model", True) and last.exists() and \
            self._log_policy(client, run_id, last, pl_module, logger_cfg.get("register_model"))
        if last.exists() and logger_cfg.get("log_model", True) and not served:
            client.log_artifact(run_id, str(last), artifact_path="checkpoints")
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / "learning_curve.png"
            try:
                drawn = plot_learning_curve(client, run_id, png)
            except Exception:  # the store is away (the metrics are queued) or the plot failed: an extra either way
                drawn = False
            if drawn:
                client.log_artifact(run_id, str(png))

    @staticmethod
    def _log_policy(client: Any, run_id: str, last: Path, module: OnPolicyModule, register: str | None) -> bool:
        """Log the policy as an MLflow model (:mod:`pgkit.mlflow_model`); False when it cannot be served so."""
        from pgkit.mlflow_model import log_policy

        try:  # an extra: a finished run must not fail while packaging its policy
            log_policy(client, run_id, last, module, register)
            return True
        except Exception as exc:
            print(f"pgkit: the policy was not logged as an MLflow model: {exc.__class__.__name__}: "
                  f"{' '.join(str(exc).split())[:200]}; the checkpoint is logged instead", file=sys.stderr)
            return False


class SystemMetrics(L.Callback):
    """MLflow's system metrics (``system/cpu_utilization_percentage``, memory, disk, network, GPU) for the run,
    sampled by MLflow's own monitor in a background thread of rank 0, bound to the run's tracking URI (nothing is
    set globally)."""

    def __init__(self, logger: MLFlowLogger, tracking_uri: str, interval: float, resumed: bool) -> None:
        self.logger, self.tracking_uri, self.interval, self.resumed = logger, tracking_uri, interval, resumed
        self.monitor = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError as exc:  # psutil missing in a hand-made environment: the run goes on without them
            print(f"pgkit: system metrics are off ({exc}); pip install psutil", file=sys.stderr)
            return
        self.monitor = SystemMetricsMonitor(self.logger.run_id, sampling_interval=self.interval,
                                            resume_logging=self.resumed, tracking_uri=self.tracking_uri)
        self.monitor.start()

    def stop(self) -> None:
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stop()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.stop()


def plot_learning_curve(client, run_id: str, path: Path) -> bool:
    """Plot training and evaluation return against env steps from the run's metric history."""
    from pgkit.plotting import return_figure, save_return_figure

    fig, ax = return_figure()
    drawn = False
    for key, style in (("rollout/episode_return", "-"), ("eval/mean_return", "o--")):
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        if history:
            ax.plot([m.step for m in history], [m.value for m in history], style, label=key)
            drawn = True
    if drawn:
        save_return_figure(fig, ax, path)
    else:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return drawn


class LastCheckpoint(Checkpoint):
    """Writes ``last.ckpt`` every ``every_n_iterations`` and at the final iteration.

    ``ModelCheckpoint(save_top_k=0, save_last=True)`` only writes it when training ends, which loses everything
    when a long run fails; this writes it as the run goes. As a ``Checkpoint`` subclass it runs after the module's
    own epoch-end hook, so the saved state includes that iteration's evaluation. The env state is inside the file
    (``OnPolicyModule.on_save_checkpoint``), so the two are written as one.
    """

    def __init__(self, path: Path, every_n_iterations: int) -> None:
        self.path, self.every = Path(path), every_n_iterations

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        iteration = trainer.current_epoch + 1
        if iteration % self.every == 0 or trainer.should_stop or iteration >= (trainer.max_epochs or 0):
            save_atomically(trainer, self.path)


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` for ``best.ckpt``, written as :func:`save_atomically` writes (Lightning
    writes the file in place, so a kill mid-write would leave a truncated best checkpoint)."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning deletes the paths of former best checkpoints it restores from the file when a new best replaces
        # them: keep only those inside this run's folder, so a crafted checkpoint cannot name a file to delete.
        super().load_state_dict(state_dict)
        folder = Path(self.dirpath).resolve() if self.dirpath else None

        def inside(path: Any) -> bool:
            return bool(path) and folder is not None and Path(str(path)).resolve().parent == folder

        self.best_k_models = {p: v for p, v in self.best_k_models.items() if inside(p)}
        for name in ("kth_best_model_path", "best_model_path", "last_model_path"):
            if not inside(getattr(self, name)):
                setattr(self, name, "")

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        save_atomically(trainer, Path(filepath), self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath


def save_atomically(trainer: L.Trainer, path: Path, weights_only: bool = False) -> None:
    """``trainer.save_checkpoint`` to a temporary file, then rename it over ``path``: a kill mid-write leaves the
    previous checkpoint whole (Lightning writes the target file in place). A write that fails (a full disk) removes
    the temporary file, keeps the previous checkpoint, and stops the run with one line (:class:`TrainingError`)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        trainer.save_checkpoint(tmp, weights_only=weights_only)
        if trainer.is_global_zero:
            os.replace(tmp, path)
    except BaseException as exc:
        if trainer.is_global_zero:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc)
            free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
            raise TrainingError(f"cannot write checkpoint {path}: {reason} ({free / 2**20:.1f} MiB free there); "
                                "the previous checkpoint is kept") from None
        raise


class StopOnSignal(L.Callback):
    """SIGINT or SIGTERM (a scheduler's preemption) ends training after the current iteration, whose checkpoint is
    then written.

    A second signal abandons the iteration at once (``KeyboardInterrupt``); the last checkpoint written stays.
    Handlers are installed for the duration of ``fit`` (main thread only) and the previous ones restored after.
    Lightning's own SIGTERM handler, which would stop in the middle of the iteration, is replaced when training
    starts. Under DDP a signal to any rank stops every rank after the same iteration.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Install the handlers (no-op off the main thread, where Python cannot receive signals)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)

    def restore(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise Interruption  # second signal: abandon the iteration (a KeyboardInterrupt)
        self.signum = signum
        print(
            f"\npgkit: received {signal.Signals(signum).name}; stopping after this iteration "
            "(send it again to abandon the iteration)",
            file=sys.stderr,
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning registered its SIGTERM handler (which raises in the middle of the iteration) after install().
        if self._previous and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, self._handle)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False):
            trainer.should_stop = True  # LastCheckpoint (which runs after this) saves when should_stop is set
            if self.signum is None:  # another rank was signalled
                self.signum = signal.SIGTERM

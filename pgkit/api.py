"""The Python API, in Stable-Baselines3's shape.

.. code-block:: python

    import pgkit

    result = pgkit.fit("configs/ppo.yaml", overrides={"trainer.total_timesteps": 100_000})
    agent = pgkit.load(result.last_checkpoint)
    action, state = agent.predict(obs, state=None, episode_start=None, deterministic=True)

``fit`` takes a YAML path, a mapping or an :class:`~pgkit.config.ExperimentConfig`, validates it exactly as the CLI
does (bad input raises :class:`~pgkit.errors.ConfigError` with the CLI's one-line message), trains, and returns a
:class:`~pgkit.training.FitResult`. It leaves the caller's process as it found it: torch's thread count, the global
random generators of torch, numpy and Python, warning filters, and logging levels are restored afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import random
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgkit.agent import Agent, load  # re-exported: pgkit.api holds the whole Python API

ConfigLike = str | Path | Mapping[str, Any] | Any
"""A YAML path, a mapping, or a validated config object."""


def _override_strings(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        # JSON is YAML, so every value (numbers, strings, lists, mappings) reads back as it was given.
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    return list(overrides)


def load_config_like(config: ConfigLike, overrides: Mapping[str, Any] | Sequence[str] | None = None) -> Any:
    """A validated config from a YAML path, a mapping or a config object, with ``overrides`` (``{"a.b": value}`` or
    ``["a.b=value"]``) applied."""
    from pgkit.config_loading import load_config

    if isinstance(config, str | Path):
        return load_config(config, _override_strings(overrides))
    if isinstance(config, Mapping):
        return load_config(None, _override_strings(overrides), base=dict(config))
    if hasattr(config, "model_dump"):
        return load_config(None, _override_strings(overrides), base=config.model_dump(mode="json",
                                                                                        exclude_unset=True))
    raise TypeError(f"pgkit.fit: expected a YAML path, a mapping or a config, got {type(config).__name__}")


@contextmanager
def preserved_process_state() -> Iterator[None]:
    """Restore what training changes in the process: torch threads, global RNG states, warning filters, logging
    levels, ``PL_GLOBAL_SEED`` and ``PL_SEED_WORKERS`` (set by Lightning's ``seed_everything``) and MLflow's
    tracking URI (set by Lightning's ``MLFlowLogger``)."""
    threads = torch.get_num_threads()
    torch_rng, numpy_rng, python_rng = torch.get_rng_state(), np.random.get_state(), random.getstate()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    loggers = {name: logging.getLogger(name).level for name in logging.root.manager.loggerDict}
    saved_env = {name: os.environ.get(name) for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "MLFLOW_TRACKING_URI",
                                                         "PGKIT_OUTPUT_DIR")}
    tracking_uri = _mlflow_tracking_uri()
    try:
        with warnings.catch_warnings():
            yield
    finally:
        torch.set_num_threads(threads)
        for name in logging.root.manager.loggerDict:
            logging.getLogger(name).setLevel(loggers.get(name, logging.NOTSET))
        _set_mlflow_tracking_uri(tracking_uri)
        for name, value in saved_env.items():  # after: mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        # The generators last: resetting MLflow's tracing above draws random numbers.
        torch.set_rng_state(torch_rng)
        np.random.set_state(numpy_rng)
        random.setstate(python_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def _mlflow_tracking_uri() -> str | None:
    """MLflow's process-wide tracking URI as set by ``mlflow.set_tracking_uri`` (None when unset), which Lightning's
    ``MLFlowLogger`` sets for the run's store."""
    from mlflow.tracking._tracking_service import utils

    return utils._tracking_uri


def _set_mlflow_tracking_uri(uri: str | None) -> None:
    import mlflow
    from mlflow.tracking._tracking_service import utils

    if uri is None:
        utils._tracking_uri = None  # unset, as before training (the public setter cannot unset)
    else:
        mlflow.set_tracking_uri(uri)


def fit(
    config: ConfigLike,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    resume: str | Path | None = None,
    callbacks: Sequence[Any] | None = None,
) -> Any:
    """Train a config (a YAML path, a mapping or a config object) and return its
    :class:`~pgkit.training.FitResult`: the output folder, the last and best checkpoints, the MLflow run id, and
    the training episodes' returns. ``resume`` continues the run saved in that checkpoint. ``callbacks`` are
    Lightning callbacks, added after pgkit's own. Each iteration is a Lightning epoch; the module computes the
    iteration's metrics (its evaluation included) in its own ``on_train_epoch_end`` and keeps them in
    ``pl_module.last_metrics``. Lightning calls a plain callback's ``on_train_epoch_end`` before the module's (it
    still sees the previous iteration's metrics there) and a ``lightning.pytorch.callbacks.Checkpoint`` subclass's
    after it, as ``pgkit sweep``'s reporter is."""
    from pgkit.training import fit as train

    cfg = load_config_like(config, overrides)
    with preserved_process_state():
        return train(cfg, resume=resume, callbacks=list(callbacks or []))


__all__ = ["Agent", "fit", "load", "load_config_like", "preserved_process_state"]

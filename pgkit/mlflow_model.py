"""The trained policy as an MLflow model (``pyfunc`` flavour), logged with every run at artifact path ``policy``.

``mlflow.pyfunc.load_model("runs:/<run_id>/policy").predict(observations)`` returns the deterministic actions for a
batch of raw observations (an array ``[N, *obs_shape]``, a DataFrame of the flattened features, or a dict of arrays
for a Dict space), with the run's observation normalisation and action bounds inside; so ``mlflow models serve -m
runs:/<run_id>/policy --env-manager local`` serves it from an environment where pgkit is installed.

The model is written with ``mlflow.pyfunc.save_model`` into a temporary folder and logged as the run's artifacts
through the run's own client, so nothing changes MLflow's global tracking URI or active run in the caller's process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.types.type_hints import TypeFromExample

ARTIFACT_PATH = "policy"


class PolicyModel(mlflow.pyfunc.PythonModel):
    """``predict(observations) -> actions`` of a pgkit checkpoint (deterministic, normalisation inside)."""

    def load_context(self, context: Any) -> None:
        from pgkit.agent import load

        self.agent = load(context.artifacts["checkpoint"])

    # TypeFromExample: MLflow checks and converts inputs against the logged input example (one observation).
    def predict(self, context: Any, model_input: TypeFromExample, params: dict[str, Any] | None = None) -> Any:
        """Deterministic actions for a batch of raw observations."""
        observations = _batch(model_input, self.agent.observation_space.shape)
        actions, _ = self.agent.predict(observations, deterministic=True)
        return np.asarray(actions)


def _batch(model_input: Any, shape: tuple[int, ...] | None) -> Any:
    """A batch of observations from what pyfunc passes: a DataFrame or array of flat rows, or a dict of arrays."""
    if isinstance(model_input, dict):
        return {key: np.asarray(value) for key, value in model_input.items()}
    values = np.asarray(getattr(model_input, "values", model_input), dtype=np.float32)
    if shape and values.ndim == 2 and len(shape) > 1:  # flat rows of a multi-dimensional Box
        values = values.reshape(len(values), *shape)
    return values


def log_policy(client: Any, run_id: str, checkpoint: Path, module: Any, register_as: str | None = None) -> None:
    """Save the policy of ``checkpoint`` as a pyfunc model and log it to ``run_id`` at ``policy``; with
    ``register_as``, also register it as a new version of that registered model.

    Raises ``ValueError`` for what pyfunc cannot serve faithfully: a recurrent policy (a served call has no state
    to carry) and nested Dict or Tuple observations (pyfunc inputs are flat)."""
    if module.policy.recurrent:
        raise ValueError("a recurrent policy needs its state between calls; use pgkit.load(...).predict or "
                         "pgkit export, which carry it")
    nested = [leaf.path for leaf in module.observation_layout.leaves if len(leaf.path) > 1]
    if nested:
        raise ValueError(f"nested observation entries {nested[:3]} are not a flat pyfunc input")
    single = module.observation_layout.add_batch_dim(module.observation_space.sample())
    with tempfile.TemporaryDirectory() as tmp, quiet_mlflow():
        path = Path(tmp) / ARTIFACT_PATH
        mlflow.pyfunc.save_model(
            path=str(path),
            # Models from code: MLflow runs pgkit's file to make the model, instead of unpickling an object.
            python_model=str(Path(__file__).with_name("mlflow_policy_code.py")),
            artifacts={"checkpoint": str(checkpoint)},
            input_example=single,
            # pgkit is installed from its checkout (an unrelated `pgkit` exists on PyPI), so the requirements name
            # the libraries it runs on; serve with --env-manager local from an environment that has pgkit.
            pip_requirements=[f"torch=={_version('torch')}", f"mlflow=={mlflow.__version__}",
                              f"gymnasium=={_version('gymnasium')}", f"numpy=={np.__version__}"],
        )
        client.log_artifacts(run_id, str(path), artifact_path=ARTIFACT_PATH)
    if register_as:
        client.register_model(run_id, register_as, ARTIFACT_PATH)  # queued with the rest while the store is away


@contextlib.contextmanager
def quiet_mlflow() -> Iterator[None]:
    """Without MLflow's notes while it saves the model (its signature inference, the input example's type hint,
    a progress bar for a local copy): one per run, none of them the user's to act on."""
    logger = logging.getLogger("mlflow")
    level, bar = logger.level, os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    logger.setLevel(logging.ERROR)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        logger.setLevel(level)
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


__all__ = ["ARTIFACT_PATH", "PolicyModel", "log_policy"]

"""The run-level sections shared by gymnasium and language-model configs: ``trainer`` (length, seed, devices,
outputs), ``logger`` (MLflow), ``checkpoint`` and ``eval``. Re-exported by :mod:`pgkit.config`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

_MODEL = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class TrainerConfig(BaseModel):
    """Run length, seed, devices and where outputs go."""

    model_config = _MODEL

    total_timesteps: int = Field(1_000_000, ge=1, le=10**12)
    """Environment steps to train for (rounded down to whole iterations)."""
    stop_at_return: float | None = None
    """End training early once the mean return of the last 100 training episodes reaches this value (SB3's
    ``StopTrainingOnRewardThreshold``, over training episodes; language models: the last 100 completions' rewards).
    Checked after each iteration, once 100 episodes have finished in this process (a resumed run counts its episodes
    afresh); that iteration is then the last: evaluated, checkpointed, and the run ends as a finished one. Under DDP
    rank 0's episodes decide. Null trains for ``total_timesteps``."""
    seed: int = Field(1, ge=0, le=2**31 - 1)
    """Seeds torch, numpy, Python and the sub-envs (sub-env i of rank r resets with ``seed + r * num_envs + i``)."""
    name: str | None = Field(None, min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    """Name of the run: the default output folder is ``runs/<name>-<env id>-s<seed>``, also the MLflow run name.
    Null uses the algorithm's name. Presets that share an algorithm and an env set their own."""
    output_dir: str | None = None
    """Directory for checkpoints; defaults to ``runs/<name>-<env id>-s<seed>``. A new run never writes over an
    earlier run's checkpoints: a default folder that holds some becomes ``...-v2`` (``-v3``, ...), and an explicit
    one is refused (exit 2) with the ``--resume`` command that continues it."""
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "cpu"
    """Lightning accelerator. Small MLP policies are usually fastest on CPU."""
    devices: int = Field(1, ge=1, le=1024)
    """Devices (processes) per node."""
    strategy: Literal["auto", "ddp", "ddp_spawn", "fsdp"] = "auto"
    """Lightning strategy. With ``devices`` (or ``num_nodes``) above 1, ``ddp`` runs one process per device, each
    with its own envs and rollout; gradients are averaged and normaliser statistics merged every iteration.
    ``fsdp`` shards the parameters over the devices (for language models that do not fit one; CUDA)."""
    num_nodes: int = Field(1, ge=1, le=4096)
    """Machines taking part (Lightning's ``num_nodes``; launch with torchrun or SLURM, see docs/distributed.md)."""
    start_timeout: float = Field(600.0, gt=0, le=86400)
    """Seconds the ranks of a torchrun job wait for each other to be ready (envs and model built) before training.
    A rank whose checks fail tells the others at once, and all exit; this limit only matters for a rank that
    crashed outright or is far slower to start."""
    skip_nonfinite_batches: bool = False
    """A minibatch whose loss (or, for PPO, gradient) is NaN or inf is skipped (and counted in
    ``train/skipped_batches``) instead of stopping the run. Off: the run stops with exit 1 naming the first bad
    quantity and the iteration, keeping the last checkpoint written before it."""
    compile: Literal["auto"] | bool = "auto"
    """``torch.compile`` the acting step and the update's loss: ``auto`` compiles on CUDA and stays eager on CPU
    (where per-call overheads of small policies dominate and compiling measured no faster); ``true`` compiles on
    any device (CPU needs a C++ compiler); ``false`` never compiles. Recurrent policies always run eager (their
    sequences change layout every minibatch; cuDNN fuses the recurrence on CUDA)."""
    kernels: Literal["auto", "numba", "torch"] = "auto"
    """How small MLP policies act and learn on the CPU. ``torch``: through the torch modules, with autograd for
    gradients (any policy, any device). ``numba``: compiled loops written for the MLP actor-critic
    (:mod:`pgkit.algorithms.mlp_kernels`): the acting step of a Gaussian policy, and PPO's whole minibatch step (loss,
    gradients, clipping), equal to the torch path up to float rounding and several times faster at CleanRL's sizes.
    They need separate tanh or ReLU MLP trunks on a vector observation, a ``normal`` head with state-independent
    log-std or a ``categorical`` one, one CPU process and no ``compile``; ``numba`` refuses (exit 2) a policy or run
    that does not qualify. Kernels a run has no use for stay torch: acting with a categorical head (sampling is not
    its cost), and the update outside PPO. ``auto``: the kernels where the run qualifies, torch elsewhere. Gymnasium
    runs only."""
    cuda_graphs: bool = True
    """When compiling on CUDA, also capture CUDA graphs (``mode="reduce-overhead"``): the acting step and the
    minibatch loss have static shapes, so each replays as one graph launch."""
    torch_threads: PositiveInt | None = 1
    """``torch.set_num_threads`` per process. Small MLP policies run fastest on one thread (intra-op threading costs
    more than it saves at these sizes); raise it for large networks, or null for torch's default."""

    def check(self) -> None:
        """Raise ``ValueError("<dotted field>: <problem> (got <value>)")`` for settings that contradict each other."""
        if self.strategy == "fsdp" and self.accelerator in ("cpu", "mps"):
            raise ValueError(f"trainer.strategy: 'fsdp' shards parameters over CUDA devices; set trainer.accelerator: "
                             f"gpu (got accelerator {self.accelerator!r})")


class LoggerConfig(BaseModel):
    """MLflow tracking."""

    model_config = _MODEL

    enabled: bool = True
    """Track the run in MLflow."""
    tracking_uri: str = "sqlite:///mlflow.db"
    """MLflow tracking URI: ``sqlite:///path.db`` (default, local) or ``http://host:port`` for a server."""
    experiment_name: str = Field("pgkit", min_length=1)
    """MLflow experiment name."""
    run_name: str | None = None
    """MLflow run name; defaults to ``<algorithm>-<env id>-s<seed>``."""
    tags: dict[str, str] = Field(default_factory=dict)
    """Extra MLflow run tags. Every run is also tagged ``pgkit.algorithm``, ``pgkit.env`` and ``pgkit.seed``."""
    log_model: bool = True
    """Log the final policy as an MLflow model (``pyfunc`` flavour) at artifact path ``policy``:
    ``mlflow.pyfunc.load_model("runs:/<run id>/policy").predict(observations)`` gives deterministic actions, with
    normalisation inside (gymnasium runs; language-model runs log their checkpoint only)."""
    system_metrics: bool = False
    """Log MLflow's system metrics (CPU, memory, disk, network; GPU with pynvml) every
    ``system_metrics_interval`` seconds, from a background thread of rank 0. Off by default: it measured 2% fewer
    steps per second on CartPole PPO (``benchmarks/system_metrics.py``: 0.974 and 0.980 of the SPS without)."""
    system_metrics_interval: float = Field(10.0, ge=1.0)
    """Seconds between system-metric samples."""
    register_model: str | None = Field(None, min_length=1)
    """Also register the logged policy as a new version of this registered model (needs ``log_model``)."""

    def check(self) -> None:
        """Cross-field checks, called from the experiment's validator (so the message names the field)."""
        if self.register_model and not self.log_model:
            raise ValueError(f"logger.register_model: needs logger.log_model: true (got {self.register_model!r})")


class CheckpointConfig(BaseModel):
    """Checkpointing."""

    model_config = _MODEL

    every_n_iterations: int = Field(1, ge=1)
    """Write ``checkpoints/last.ckpt`` every this many iterations and at the last one."""
    save_best: bool = True
    """Also keep ``checkpoints/best.ckpt``, the checkpoint with the highest evaluation return."""


class EvalConfig(BaseModel):
    """Periodic evaluation during training, with frozen normalisation."""

    model_config = _MODEL

    every_n_iterations: int = Field(20, ge=0)
    """Evaluate every this many iterations and at the last one; 0 disables evaluation."""
    episodes: int = Field(5, ge=1, le=10_000)
    """Complete episodes per evaluation."""
    deterministic: bool = True
    """Act with the distribution's mode instead of sampling."""

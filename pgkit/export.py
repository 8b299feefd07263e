"""``pgkit export``: a trained policy as a standalone deterministic ONNX or TorchScript file.

The exported function takes raw float32 observations ``[N, obs_dim]`` and returns the environment actions ``[N,
...]`` that ``pgkit.load(ckpt).predict(obs, deterministic=True)`` returns: the observation normalisation (with the
run's frozen statistics), the distribution's mode and the action bounds (clip or rescale, tanh squashing, a discrete
space's ``start``) are all inside, so no pgkit is needed to run it.

A recurrent policy exports as ``(obs [N, obs_dim], state [N, S]) -> (actions, next_state)``; start each episode
from a zero state (``pgkit`` resets the state at episode starts the same way).

Flat Box observations only: images, Dict and Tuple spaces are refused (exit 2), as their input would not be one
array.
"""

from __future__ import annotations

import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from pgkit.errors import UserError

ExportFormat = Literal["onnx", "torchscript"]


class DeterministicPolicy(nn.Module):
    """Raw observations to deterministic environment actions, normalisation and bounds inside (a copy of the
    trained module's parts; the statistics are frozen buffers)."""

    def __init__(self, module: Any) -> None:
        super().__init__()
        normalizer = module.obs_normalizer
        self.normalize = bool(normalizer.enabled)
        rms = normalizer.rms
        self.register_buffer("mean", rms.mean.detach().clone().to(torch.float64).flatten())
        self.register_buffer("std", (rms.var.detach().clone().to(torch.float64).flatten() + 1e-8).sqrt())
        self.clip = float(normalizer.clip)
        self.policy = module.policy
        self.adapter = module.action_adapter
        self.recurrent = bool(module.policy.recurrent)

    def normalized(self, obs: Tensor) -> Tensor:
        """The normaliser's ``clip((obs - mean) / sqrt(var + eps))`` in float64, returned as float32."""
        if not self.normalize:
            return obs.to(torch.float32)
        x = (obs.to(torch.float64) - self.mean) / self.std
        return x.clamp(-self.clip, self.clip).to(torch.float32)

    def forward(self, obs: Tensor, state: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        norm = self.normalized(obs)
        if self.recurrent:
            dist, _, next_state = self.policy.step(norm, state)
            return self.adapter(dist, dist.mode()), next_state
        dist = self.policy.distribution(norm)
        return self.adapter(dist, dist.mode())


def export_policy(checkpoint: str | Path, fmt: ExportFormat, output: str | Path) -> Path:
    """Write the deterministic policy of ``checkpoint`` to ``output`` as ``fmt``; returns the path."""
    from pgkit.evaluation import restore_agent

    check_output(checkpoint, output)
    module, _, _ = restore_agent(checkpoint, needs_env=False, action="pgkit export")
    layout = module.observation_layout
    if layout.structured or any(leaf.kind != "vector" for leaf in layout.leaves):
        raise UserError(f"export error: {checkpoint}: only flat Box observations export as one array "
                        f"(this run's space is {module.observation_space})")
    policy = DeterministicPolicy(module).eval()
    obs_dim = layout.leaves[0].shape[0]
    example = (torch.zeros(2, obs_dim),)
    if policy.recurrent:
        example = (*example, torch.zeros(2, module.policy.state_size))
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # torch's own notices while tracing nn.LSTM/GRU (input checks it records as constants, flat weights it
        # re-assigns); the exported files are tested against predict on other batch sizes.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if fmt == "torchscript":
            torch.jit.trace(policy, example, check_trace=False).save(str(out))
        else:
            _export_onnx(policy, example, out)
    return out


def check_output(checkpoint: str | Path, output: str | Path) -> None:
    """Raise :class:`UserError` when ``output`` is the checkpoint itself (through any path or link), another
    checkpoint, or a folder: an export never writes over a run's state."""
    out = Path(output)
    if not out.exists():
        return
    if out.is_dir():
        raise UserError(f"export error: --output: {output} is a directory; name a file")
    if Path(checkpoint).exists() and os.path.samefile(out, checkpoint):
        raise UserError(f"export error: --output: {output} is the checkpoint being exported; name another file")
    if out.suffix == ".ckpt" or _is_checkpoint(out):
        raise UserError(f"export error: --output: {output} is a checkpoint; an export never writes over one, name "
                        "another file")


def _is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a ``torch.save`` archive (a checkpoint), not a TorchScript one (which has code)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/data.pkl") for n in names) and not any("/code/" in n for n in names)


def _export_onnx(policy: DeterministicPolicy, example: tuple[Tensor, ...], out: Path) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UserError("export error: --format onnx needs onnx and onnxscript: in your pgkit checkout, run "
                        "pip install -e '.[export]' -c constraints.txt") from None
    names = ["obs", "state"][: len(example)]
    outputs = ["actions", "next_state"] if policy.recurrent else ["actions"]
    batch = torch.export.Dim("batch")
    # torch's exporter logs a warning per torchvision op it skips when torchvision is absent (it is not needed here),
    # and torch.export a deprecation notice (LeafSpec) under torch 2.13.
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            _onnx_export(policy, example, out, names, outputs, batch)
    finally:
        onnx_logger.setLevel(level)


def _onnx_export(policy: DeterministicPolicy, example: tuple[Tensor, ...], out: Path, names: list[str],
                 outputs: list[str], batch: Any) -> None:
    torch.onnx.export(
        policy,
        example,
        str(out),
        input_names=names,
        output_names=outputs,
        dynamic_shapes=tuple({0: batch} for _ in example),
        dynamo=True,
        optimize=True,
        verbose=False,
    )


__all__ = ["DeterministicPolicy", "ExportFormat", "export_policy"]

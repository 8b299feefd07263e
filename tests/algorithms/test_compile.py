"""``trainer.compile``: eager on CPU by default, the compiled functions traceable by dynamo, and on CUDA (skipped
without a GPU) compiled training with CUDA graphs."""

from __future__ import annotations

import pytest
import torch
from paths import ROOT

from pgkit.algorithms.base import OnPolicyModule
from pgkit.config_loading import load_config
from pgkit.training import fit

QUIET = ["logger.enabled=false", "eval.every_n_iterations=0", "checkpoint.save_best=false"]
SMALL = [
    "env.id=Pendulum-v1",
    "algorithm.num_steps=128",
    "algorithm.num_minibatches=4",
    "algorithm.update_epochs=2",
    "trainer.total_timesteps=512",
]


def _metrics(overrides: list[str]) -> tuple[dict[str, float], list[float]]:
    cfg = load_config(ROOT / "configs" / "ppo.yaml", [*QUIET, *SMALL, *overrides])
    captured = {}
    original = OnPolicyModule.on_train_epoch_end

    def spy(self):
        original(self)
        captured.update(self.last_metrics)
        captured["policy_sum"] = float(sum(p.detach().sum() for p in self.policy.parameters()))

    OnPolicyModule.on_train_epoch_end = spy
    try:
        result = fit(cfg)
    finally:
        OnPolicyModule.on_train_epoch_end = original
    captured.pop("time/sps", None)
    return captured, result.episode_returns


def test_auto_stays_eager_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(kw) or fn)
    _metrics(["trainer.compile=auto"])
    assert calls == []
    _metrics(["trainer.compile=true"])
    assert len(calls) == 2  # the acting step and the loss
    assert all(kw == {"dynamic": False} for kw in calls)  # no CUDA graphs off CUDA


@pytest.mark.skipif(torch._dynamo.is_dynamo_supported() is False, reason="dynamo unsupported on this Python")
def test_compiled_functions_trace_and_match_eager(monkeypatch):
    """Dynamo captures the acting step and the PPO loss whole (run by the eager backend, so no C++ build), and
    training through the captured graphs gives the same numbers as eager."""
    eager, eager_returns = _metrics(["trainer.compile=false"])
    real_compile = torch.compile
    compiled_fns = []

    def eager_backend(fn, **kw):
        kw.pop("mode", None)
        compiled = real_compile(fn, **(kw | {"backend": "eager", "fullgraph": True}))  # no graph breaks
        compiled_fns.append(compiled)
        return compiled

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", eager_backend)
    traced, traced_returns = _metrics(["trainer.compile=true"])
    assert len(compiled_fns) == 2
    assert traced.keys() == eager.keys()
    for key, value in eager.items():
        assert traced[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert traced_returns == pytest.approx(eager_returns, rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_compiled_with_graphs_trains():
    compiled, _ = _metrics(["trainer.accelerator=gpu", "trainer.compile=auto", "trainer.cuda_graphs=true"])
    eager, _ = _metrics(["trainer.accelerator=gpu", "trainer.compile=false"])
    assert set(compiled) == set(eager)
    for key in ("train/policy_loss", "train/value_loss", "train/approx_kl"):
        assert torch.isfinite(torch.tensor(compiled[key]))
    # Same seed, same device: compiled kernels reorder float math, so close rather than equal.
    assert compiled["train/value_loss"] == pytest.approx(eager["train/value_loss"], rel=0.2)

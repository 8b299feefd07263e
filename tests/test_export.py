"""pgkit export: ONNX (through onnxruntime) and TorchScript files give the actions of
pgkit.load(ckpt).predict(obs, deterministic=True), normalisation and bounds inside; recurrent policies carry state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pgkit
from pgkit.cli import main

QUIET = {"logger.enabled": False, "eval.every_n_iterations": 0}


def trained(env: str, env_kwargs: dict | None = None, **extra) -> str:
    config = {"algorithm": {"name": "ppo", "num_steps": 64, "num_minibatches": 2},
              "env": {"id": env, "num_envs": 2, "normalize_obs": True, "kwargs": env_kwargs or {}},
              "trainer": {"total_timesteps": 256, "output_dir": "run"}, **extra}
    return str(pgkit.fit(config, overrides=QUIET).last_checkpoint)


def run_file(fmt: str, path: str, *inputs: np.ndarray) -> list[np.ndarray]:
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path)
        names = [i.name for i in session.get_inputs()]
        return session.run(None, dict(zip(names, inputs, strict=True)))
    module = torch.jit.load(path)
    out = module(*(torch.from_numpy(x) for x in inputs))
    return [t.detach().numpy() for t in (out if isinstance(out, tuple) else (out,))]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize(
    ("env", "extra"),
    [
        ("Pendulum-v1", {}),  # Box actions clipped to [-2, 2]
        ("Pendulum-v1", {"policy": {"distribution": "tanh_normal"}}),
        ("CartPole-v1", {}),  # Discrete
    ],
)
@pytest.mark.slow
def test_exported_policy_equals_predict(capsys, fmt, env, extra):
    ckpt = trained(env, **extra)
    assert main(["export", "--checkpoint", ckpt, "--format", fmt, "--output", f"policy.{fmt}"]) == 0
    agent = pgkit.load(ckpt)
    obs = np.stack([agent.observation_space.sample() for _ in range(7)]).astype(np.float32) * 3  # some clipped
    (actions,) = run_file(fmt, f"policy.{fmt}", obs)
    expected, _ = agent.predict(obs, deterministic=True)
    assert actions.shape == expected.shape
    np.testing.assert_allclose(actions, expected, rtol=1e-5, atol=1e-6)
    if env == "Pendulum-v1":
        assert np.all(np.abs(actions) <= 2.0)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.slow
def test_a_recurrent_policy_exports_with_its_state(fmt):
    ckpt = trained("CartPole-v1", policy={"recurrent": {"kind": "lstm", "hidden_size": 8}})
    assert main(["export", "--checkpoint", ckpt, "--format", fmt, "--output", f"policy.{fmt}"]) == 0
    agent = pgkit.load(ckpt)
    rng = np.random.default_rng(0)
    state_np = np.zeros((3, agent.module.policy.state_size), np.float32)
    state = None
    for _ in range(4):  # four steps: the exported state must follow pgkit's
        obs = rng.normal(size=(3, 4)).astype(np.float32)
        actions, state_np = run_file(fmt, f"policy.{fmt}", obs, state_np)
        expected, state = agent.predict(obs, state=state, deterministic=True)
        np.testing.assert_array_equal(actions, expected)
        np.testing.assert_allclose(state_np, state.numpy(), rtol=1e-5, atol=1e-6)


def test_structured_observations_are_refused_with_exit_2(capsys):
    ckpt = trained("pgkit/Squared-v0", {"observation": "dict"},
                   policy={"encoder": {"cnn_channels": [4], "cnn_kernels": [3], "cnn_strides": [1],
                                       "cnn_features": 16}})
    capsys.readouterr()  # the training's progress bar
    code = main(["export", "--checkpoint", ckpt, "--format", "onnx", "--output", "p.onnx"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("export error: run/checkpoints/last.ckpt: only flat Box observations"), err

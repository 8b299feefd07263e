"""A run stopped between iterations and resumed with --resume continues exactly: its per-iteration metrics after
the resume equal an uninterrupted run's, in the same MLflow run. Covers policy, optimizer, normalisers, LR schedule,
counters, RNG states and the env state (MuJoCo physics included)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from paths import ROOT

from pgkit.algorithms.base import OnPolicyModule
from pgkit.checkpoints import load_checkpoint
from pgkit.config_loading import load_config
from pgkit.training import fit

CASES = {
    "ppo-pendulum": (
        "ppo.yaml",
        ["env.id=Pendulum-v1", "env.num_envs=2", "algorithm.num_steps=64", "algorithm.num_minibatches=4",
         "algorithm.update_epochs=2", "trainer.total_timesteps=768", "eval.every_n_iterations=2", "eval.episodes=2"],
        6, 3,
    ),
    # env.backend: split: the worker's half of the sub-envs is saved in the checkpoint and restored into a new worker
    "ppo-inverted-pendulum-split-backend": (
        "ppo.yaml",
        ["env.id=InvertedPendulum-v5", "env.num_envs=3", "env.backend=split", "algorithm.num_steps=64",
         "algorithm.num_minibatches=4", "algorithm.update_epochs=2", "trainer.total_timesteps=1152",
         "eval.every_n_iterations=2", "eval.episodes=2"],
        6, 3,
    ),
    "a2c-inverted-pendulum": (
        "a2c.yaml",
        ["env.id=InvertedPendulum-v5", "env.num_envs=2", "algorithm.num_steps=16", "policy.actor_hidden=[32, 32]",
         "policy.critic_hidden=[32, 32]", "trainer.total_timesteps=256", "eval.every_n_iterations=4",
         "eval.episodes=2", "checkpoint.every_n_iterations=1"],
        8, 5,
    ),
    # A recurrent policy on a Dict of an image and a vector: the env state also carries each env's LSTM state.
    "ppo-lstm-dict": (
        "ppo-lstm.yaml",
        ["env.id=pgkit/Squared-v0", "env.kwargs={observation: dict}", "env.num_envs=2", "algorithm.num_steps=32",
         "algorithm.bptt_horizon=8", "algorithm.num_minibatches=2", "algorithm.update_epochs=2",
         "policy.recurrent={hidden_size: 16}", "trainer.total_timesteps=384", "eval.every_n_iterations=2",
         "eval.episodes=2", "policy.encoder={cnn_channels: [4], cnn_kernels: [3], cnn_strides: [1], cnn_features: 16}"],
        6, 3,
    ),
}


def _histories(db: Path) -> tuple[str, dict[str, dict[int, float]]]:
    client = MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("pgkit").experiment_id])
    keys = [k for k in run.data.metrics if k != "time/sps"]
    return run.info.run_id, {k: {m.step: m.value for m in client.get_metric_history(run.info.run_id, k)} for k in keys}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch, case):
    config, overrides, iterations, stop_after = CASES[case]

    def cfg(name: str):
        return load_config(ROOT / "configs" / config, [*overrides, f"trainer.output_dir={tmp_path / name}",
                                                        f"logger.tracking_uri=sqlite:///{tmp_path / name}.db"])

    fit(cfg("whole"))
    _, whole = _histories(tmp_path / "whole.db")

    original = OnPolicyModule.on_train_epoch_end

    def stop_early(self):
        original(self)
        if self.current_epoch + 1 == stop_after:
            self.trainer.should_stop = True  # as after SIGTERM: the iteration ends and its checkpoint is written

    monkeypatch.setattr(OnPolicyModule, "on_train_epoch_end", stop_early)
    first = fit(cfg("split"))
    monkeypatch.setattr(OnPolicyModule, "on_train_epoch_end", original)
    last = first.last_checkpoint
    assert set(load_checkpoint(last).env_states) == {"0"}  # the env state is inside the checkpoint
    batch = first.env_steps // stop_after
    second = fit(cfg("split"), resume=last)
    assert second.env_steps == iterations * batch
    run_id, split = _histories(tmp_path / "split.db")
    assert run_id == first.mlflow_run_id == second.mlflow_run_id  # one MLflow run, continued

    assert split.keys() == whole.keys()
    for key, values in whole.items():
        assert sorted(split[key]) == sorted(values), key  # no restart at step 0, no gap
        after = {step: v for step, v in values.items() if step > stop_after * batch}
        assert after, key
        for step, value in after.items():
            assert split[key][step] == value, (key, step, split[key][step], value)


def test_env_state_from_someone_else_is_not_unpickled(tmp_path, monkeypatch, capsys):
    overrides = ["env.id=Pendulum-v1", "algorithm.num_steps=64", "algorithm.num_minibatches=2",
                 "trainer.total_timesteps=128", "logger.enabled=false", "eval.every_n_iterations=0",
                 f"trainer.output_dir={tmp_path / 'run'}"]
    cfg = load_config(ROOT / "configs" / "ppo.yaml", overrides)
    result = fit(cfg)
    # Another user's key: the signature no longer verifies.
    monkeypatch.setenv("PGKIT_HOME", str(tmp_path / "other-user"))
    import pickle

    loads = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: loads.append(1))
    cfg2 = load_config(ROOT / "configs" / "ppo.yaml", [*overrides[:-3], "trainer.total_timesteps=256",
                                                         "logger.enabled=false", "eval.every_n_iterations=0",
                                                         f"trainer.output_dir={tmp_path / 'run'}"])
    resumed = fit(cfg2, resume=result.last_checkpoint)
    assert resumed.env_steps == 256
    assert loads == []
    assert "resuming with freshly reset envs" in capsys.readouterr().err


class Crash(BaseException):
    """The process dying at one exact instant (raised from a rename, as a SIGKILL would stop it there)."""


@pytest.mark.slow
def test_a_crash_while_the_checkpoint_is_renamed_into_place_resumes_exactly(tmp_path, monkeypatch):
    # Before: the env state was renamed into place as its own file just before last.ckpt; a crash between the two
    # paired the new env state with the old checkpoint, and the resumed run silently diverged.
    import os

    config, overrides, _, _ = CASES["ppo-pendulum"]

    def cfg(name: str):
        return load_config(ROOT / "configs" / config, [*overrides, f"trainer.output_dir={tmp_path / name}",
                                                        f"logger.tracking_uri=sqlite:///{tmp_path / name}.db"])

    fit(cfg("whole"))
    _, whole = _histories(tmp_path / "whole.db")
    real_replace, renames = os.replace, []

    def replace(src, dst):
        renames.append(str(dst))
        if str(dst).endswith("last.ckpt") and sum(r.endswith("last.ckpt") for r in renames) == 4:
            raise Crash  # iteration 4's checkpoint never lands: iteration 3's stays
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Crash):
        fit(cfg("crashed"))
    monkeypatch.setattr(os, "replace", real_replace)
    last = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last).env_steps == 3 * 128
    fit(cfg("crashed"), resume=last)
    _, crashed = _histories(tmp_path / "crashed.db")
    for key, values in whole.items():
        for step, value in values.items():
            assert crashed[key][step] == value, (key, step)


def test_signed_env_state_that_no_longer_unpickles_resumes_with_fresh_envs(tmp_path, capsys):
    import torch

    from pgkit.resume_state import _MAGIC
    from pgkit.trust import sign

    overrides = ["env.id=Pendulum-v1", "algorithm.num_steps=64", "algorithm.num_minibatches=2",
                 "trainer.total_timesteps=128", "logger.enabled=false", "eval.every_n_iterations=0",
                 f"trainer.output_dir={tmp_path / 'run'}"]
    result = fit(load_config(ROOT / "configs" / "ppo.yaml", overrides))
    ckpt = torch.load(result.last_checkpoint, weights_only=True)
    payload = b"\x80\x05c" + b"vanished_module\nVanishedEnv\n."  # a pickle naming a class that no longer exists
    blob = _MAGIC + sign(payload).encode() + b"\n" + payload
    ckpt["pgkit"]["env_state"]["0"] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    torch.save(ckpt, result.last_checkpoint)
    more = [*overrides[:3], "trainer.total_timesteps=256", *overrides[4:]]
    resumed = fit(load_config(ROOT / "configs" / "ppo.yaml", more), resume=result.last_checkpoint)
    assert resumed.env_steps == 256
    err = capsys.readouterr().err
    assert "resuming with freshly reset envs: its signed env state could not be unpickled (ModuleNotFoundError" \
        in err, err

"""Injected faults: non-finite observations, rewards and losses, and a raising env. Each run stops with exit 1 and
a message naming the quantity (or env and sub-env) and the iteration, keeping the checkpoint of the last good
iteration; ``trainer.skip_nonfinite_batches`` skips bad minibatches instead."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from pgkit.checkpoints import load_checkpoint


def _config(fault: str, at: int, **trainer) -> dict:
    return {
        "algorithm": {"name": "ppo", "num_steps": 32, "num_minibatches": 2, "update_epochs": 2},
        "env": {"id": "envs_for_tests:FaultyEnv", "kwargs": {"fault": fault, "at": at}, "num_envs": 2,
                "normalize_reward": False},
        "trainer": {"total_timesteps": 640, "output_dir": "out", "seed": 1, **trainer},
        "logger": {"enabled": False},
        "eval": {"every_n_iterations": 0},
    }


def _fit(tmp_path, config: dict) -> subprocess.CompletedProcess:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "pgkit", "fit", "--config", "c.yaml"], capture_output=True,
                          text=True, timeout=180, cwd=tmp_path)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("nan_obs", "non-finite observation from env envs_for_tests:FaultyEnv sub-env 1 at iteration 3"),
        ("inf_reward", "non-finite reward from env envs_for_tests:FaultyEnv sub-env 1 at iteration 3"),
        ("raise", "env envs_for_tests:FaultyEnv failed at iteration 3: sub-env 1 step: RuntimeError: simulated "
                  "physics blow-up"),
    ],
)
@pytest.mark.slow
def test_env_faults_stop_with_exit_1_naming_the_sub_env(tmp_path, fault, message):
    # Each sub-env steps 32 times an iteration: step 70 of sub-env 1 falls in iteration 3.
    proc = _fit(tmp_path, _config(fault, at=70))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "last checkpoint kept" in proc.stderr
    assert load_checkpoint(tmp_path / "out/checkpoints/last.ckpt").env_steps == 128  # 2 good iterations


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    # A finite reward of 3e38 overflows the float32 returns: the losses of iteration 3 are not finite.
    proc = _fit(tmp_path, _config("huge_reward", at=70))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "non-finite loss at iteration 3 (env step 192)" in proc.stderr
    assert "trainer.skip_nonfinite_batches" in proc.stderr and "Traceback" not in proc.stderr
    ckpt = load_checkpoint(tmp_path / "out/checkpoints/last.ckpt")
    assert ckpt.env_steps == 128
    import torch

    assert all(torch.isfinite(v).all() for v in ckpt.state_dict.values() if v.is_floating_point())


def test_running_statistics_that_overflow_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, capsys):
    # Before: rewards of 1e300 made the reward normaliser's variance inf (in the checkpoint too) and the run went on.
    from pgkit.cli import main

    config = _config("overflow", at=70)
    config["env"]["normalize_reward"] = True
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    code = main(["fit", "--config", "c.yaml"])
    err = capsys.readouterr().err
    assert code == 1, err[-2000:]
    assert "the reward normaliser's running statistics overflowed at iteration 3" in err, err[-2000:]
    assert "Traceback" not in err and "last checkpoint kept" in err
    ckpt = load_checkpoint(tmp_path / "out/checkpoints/last.ckpt")  # loads: every statistic in it is finite
    assert ckpt.env_steps == 128
    assert float(ckpt.state_dict["reward_scaler.return_rms.var"]) < 1e6


@pytest.mark.slow
def test_skip_nonfinite_batches_finishes_the_run(tmp_path):
    config = _config("huge_reward", at=70, skip_nonfinite_batches=True)
    config["logger"] = {"enabled": True, "tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"}
    proc = _fit(tmp_path, config)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("pgkit").experiment_id])
    skipped = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/skipped_batches")}
    assert skipped[128] == 0 and skipped[192] == 4  # iteration 3: all 2 epochs x 2 minibatches skipped
    ckpt = load_checkpoint(tmp_path / "out/checkpoints/last.ckpt")
    assert ckpt.env_steps == 640
    import torch

    assert all(torch.isfinite(v).all() for v in ckpt.state_dict.values() if v.is_floating_point())

"""SIGINT and SIGTERM during training: the iteration ends, last.ckpt is written atomically, the MLflow run is
KILLED, and the process exits with 128 + the signal number; during start-up, the same exit codes and one line."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from pgkit.checkpoints import load_checkpoint

pytestmark = pytest.mark.slow  # day-to-day: pytest -m "not slow"


def _slow_run(tmp_path: Path, *extra: str) -> subprocess.Popen:
    config = {"algorithm": {"name": "ppo", "num_steps": 40, "num_minibatches": 2, "update_epochs": 1},
              "env": {"id": "envs_for_tests:SlowEnv", "num_envs": 1, "kwargs": {"delay": 0.025}},
              "trainer": {"total_timesteps": 100_000, "output_dir": str(tmp_path / "run")},
              "logger": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"}, "eval": {"every_n_iterations": 0}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    return subprocess.Popen([sys.executable, "-m", "pgkit", "fit", "--config", str(tmp_path / "c.yaml"), *extra],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_iteration_saves_that_iteration(tmp_path, signum):
    # Before: Lightning's own SIGTERM handler ended the run in the middle of the iteration, which was lost (the
    # checkpoint stayed at the previous one); SIGINT finished it. A scheduler's preemption is a SIGTERM.
    proc = _slow_run(tmp_path)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not last.exists():  # iteration 1 done: 40 steps of 25 ms each, so iteration 2 takes a second
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    time.sleep(0.3)
    at_signal = load_checkpoint(last).env_steps
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in err and "Traceback" not in err
    ckpt = load_checkpoint(last)  # complete and loadable (weights_only)
    assert ckpt.env_steps == at_signal + 40  # the iteration in progress finished and was saved
    assert not list(last.parent.glob("*.tmp"))
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("pgkit").experiment_id])
    assert run.info.status == "KILLED" and run.info.run_id == ckpt.mlflow_run_id
    logged = max(m.step for m in client.get_metric_history(run.info.run_id, "train/policy_loss"))
    assert logged == ckpt.env_steps  # the checkpoint holds the last logged iteration


@pytest.mark.parametrize(("signum", "delay"), [(signal.SIGINT, 0.4), (signal.SIGINT, 1.5), (signal.SIGTERM, 2.5)])
def test_a_signal_during_start_up_exits_cleanly(tmp_path, signum, delay):
    # Before: Ctrl-C in the first seconds gave a traceback, or exit 1.
    proc = _slow_run(tmp_path)
    time.sleep(delay)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in err or "interrupted (SIGINT)" in err, err[-3000:]
    assert not list((tmp_path / "run").glob("checkpoints/*.tmp"))

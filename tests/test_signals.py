"""SIGINT and SIGTERM during training: the iteration ends, last.ckpt is written atomically, the MLflow run is
KILLED, and the process exits with 128 + the signal number."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pgkit.checkpoints import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_after_the_iteration_with_checkpoint_and_killed_run(tmp_path, signum):
    out, db = tmp_path / "run", tmp_path / "mlflow.db"
    cmd = [sys.executable, "-m", "pgkit", "fit", "--config", str(ROOT / "configs" / "ppo-cartpole.yaml"),
           "--set", "trainer.total_timesteps=100000000", "--set", "checkpoint.every_n_iterations=1",
           "--set", f"trainer.output_dir={out}", "--set", f"logger.tracking_uri=sqlite:///{db}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not last.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.2)
    time.sleep(1.0)  # well into training
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in err and "Traceback" not in err

    ckpt = load_checkpoint(last)  # complete and loadable (weights_only)
    assert 0 < ckpt.env_steps < 100_000_000
    assert ckpt.env_steps % 256 == 0  # whole iterations of 32 steps x 8 envs
    assert not list(last.parent.glob("*.tmp"))
    client = MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("pgkit").experiment_id])
    assert run.info.status == "KILLED"
    assert run.info.run_id == ckpt.mlflow_run_id
    logged = max(m.step for m in client.get_metric_history(run.info.run_id, "train/policy_loss"))
    assert logged == ckpt.env_steps  # the checkpoint holds the last logged iteration

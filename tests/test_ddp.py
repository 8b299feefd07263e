"""Lightning DDP on CPU with gloo: two processes, each with its own envs and rollout; averaged gradients, merged
normaliser statistics, rank-0 logging and checkpoints, metrics over both ranks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from mlflow import MlflowClient

from pgkit.checkpoints import load_checkpoint
from pgkit.environments import RunningMeanStd

ROOT = Path(__file__).resolve().parent.parent


def test_two_cpu_processes_train_one_run(tmp_path):
    db = tmp_path / "mlflow.db"
    cmd = [sys.executable, "-m", "pgkit", "fit", "--config", str(ROOT / "configs" / "ppo.yaml"),
           "--set", "env.id=Pendulum-v1", "--set", "algorithm.num_steps=256", "--set", "algorithm.num_minibatches=4",
           "--set", "algorithm.update_epochs=2", "--set", "trainer.total_timesteps=2048",
           "--set", "trainer.devices=2", "--set", "trainer.strategy=ddp", "--set", "eval.every_n_iterations=2",
           "--set", "trainer.output_dir=out", "--set", f"logger.tracking_uri=sqlite:///{db}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Both ranks end with identical parameters and normaliser statistics (checked inside the run).
    assert "ddp: 2 ranks agree on parameters and normaliser statistics" in proc.stdout
    assert proc.stdout.count("done: 2048 env steps") == 1  # rank 0 reports

    client = MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("pgkit").experiment_id])  # one run, from rank 0
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/policy_loss")]
    assert steps == [512, 1024, 1536, 2048]  # 256 steps on each of 2 ranks per iteration
    sps = client.get_metric_history(run.info.run_id, "time/sps")
    assert all(m.value > 0 for m in sps)

    ckpt = load_checkpoint(tmp_path / "out/checkpoints/last.ckpt")
    assert ckpt.env_steps == 2048
    # The saved statistics count both ranks' observations: 2 ranks x 4 iterations x 256 steps.
    assert float(ckpt.state_dict["obs_normalizer.rms.count"]) == 2048 + 1e-4


def test_merge_ranks_equals_one_process_seeing_all_data():
    torch.manual_seed(0)
    start = torch.randn(100, 3, dtype=torch.float64) * 2 + 1
    parts = [torch.randn(n, 3, dtype=torch.float64) * s + m for n, s, m in ((30, 1.0, 0.0), (50, 3.0, 5.0))]
    reference = RunningMeanStd((3,))
    reference.update(start)
    for part in parts:
        reference.update(part)

    ranks = [RunningMeanStd((3,)) for _ in parts]
    for r in ranks:
        r.update(start)
    snapshots = [r.snapshot() for r in ranks]
    for r, part in zip(ranks, parts, strict=True):
        for chunk in part.split(7):  # many small updates, as in a rollout
            r.update(chunk)
    local = []
    for r, snap in zip(ranks, snapshots, strict=True):  # what each rank contributes to the gather
        captured = {}

        def gather(t, captured=captured):
            captured["t"] = t
            raise StopIteration

        try:
            r.merge_ranks(snap, gather)
        except StopIteration:
            local.append(captured["t"])
    stacked = torch.stack(local)
    for r, snap in zip(ranks, snapshots, strict=True):
        r.merge_ranks(snap, lambda t: stacked)
        torch.testing.assert_close(r.mean, reference.mean)
        torch.testing.assert_close(r.var, reference.var)
        torch.testing.assert_close(r.count, reference.count)
